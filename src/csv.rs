//! CSV records as RFC 4180 writes them (and as the `csv` crate does by default): fields separated
//! by commas, a field quoted only when it holds a comma, a double quote or a line break, a quote
//! inside doubled.

/// One record, without its line end.
///
/// ```
/// assert_eq!(densenet::csv::record(&["a", "b,c", "say \"hi\""]), r#"a,"b,c","say ""hi""""#);
/// ```
pub fn record<S: AsRef<str>>(fields: &[S]) -> String {
    // A lone empty field would otherwise be an empty line, which readers skip.
    if let [only] = fields {
        if only.as_ref().is_empty() {
            return "\"\"".to_string();
        }
    }
    let mut line = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let field = field.as_ref();
        if field.contains([',', '"', '\n', '\r']) {
            line.push('"');
            line.push_str(&field.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(field);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::record;

    #[test]
    fn plain_fields_are_left_as_they_are() {
        assert_eq!(
            record(&["file", "", "0.5", "apple pie"]),
            "file,,0.5,apple pie"
        );
        assert_eq!(record::<&str>(&[]), "");
    }

    #[test]
    fn commas_quotes_and_line_breaks_are_quoted() {
        assert_eq!(record(&["a,b", "c"]), "\"a,b\",c");
        assert_eq!(record(&["say \"hi\"", "x"]), "\"say \"\"hi\"\"\",x");
        assert_eq!(record(&["two\nlines", "cr\r"]), "\"two\nlines\",\"cr\r\"");
        assert_eq!(record(&["\""]), "\"\"\"\"");
    }

    #[test]
    fn a_lone_empty_field_is_quoted() {
        assert_eq!(record(&[""]), "\"\"");
        assert_eq!(record(&["", ""]), ",");
    }
}
