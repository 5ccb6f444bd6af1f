//! `densenet system`: what this machine offers the engine, and what it will run.

use densenet::fast::{
    amx_allowed, resolve, CpuFeatures, Fallback, Isa, Precision, AMX_VARIABLE, ISA_VARIABLE,
};
use std::process::ExitCode;

/// Arguments of `densenet system`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs `densenet system`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let cpu = CpuFeatures::detect();
    let choice = Isa::from_env()?;
    let threads = rayon::current_num_threads();
    let backends = densenet::device::compiled_backends();
    let variable = std::env::var(ISA_VARIABLE).unwrap_or_default();
    if args.json {
        let features: serde_json::Map<_, _> = cpu
            .list()
            .into_iter()
            .map(|(name, has)| (name.to_string(), has.into()))
            .collect();
        let supported: Vec<_> = Isa::ALL
            .into_iter()
            .filter(|isa| isa.is_supported())
            .map(Isa::name)
            .collect();
        let report = serde_json::json!({
            "arch": std::env::consts::ARCH,
            "cpu_features": features,
            "isa_supported": supported,
            "isa_best": Isa::best().name(),
            "isa_requested": choice.requested.map(Isa::name),
            "isa": choice.isa.name(),
            "bf16_native": Precision::Bf16.is_native(choice.isa),
            "int8_native": Precision::Int8.is_native(choice.isa),
            "int8_runs": Precision::Int8.fallback(choice.isa).name(),
            "amx_allowed": amx_allowed(),
            "threads": threads,
            "backends": backends,
        });
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("architecture:     {}", std::env::consts::ARCH);
    let features: Vec<String> = cpu
        .list()
        .into_iter()
        .map(|(name, has)| format!("{name} {}", yes_no(has)))
        .collect();
    println!("CPU features:     {}", features.join(", "));
    let sets: Vec<String> = Isa::ALL
        .into_iter()
        .rev()
        .map(|isa| format!("{isa} {}", yes_no(isa.is_supported())))
        .collect();
    println!("instruction sets: {}", sets.join(", "));
    let why = match choice.requested {
        None => format!("the best this CPU runs; {ISA_VARIABLE} is not set"),
        Some(r) if choice.is_capped_by_cpu() => {
            format!("{ISA_VARIABLE}={variable} asks for {r}, which this CPU does not run")
        }
        Some(_) => format!("{ISA_VARIABLE}={variable}"),
    };
    println!("fast path runs:   {} ({why})", choice.isa);
    let bf16 = reduced_line(Precision::Bf16, choice.isa, cpu.amx_bf16, "AVX-512 BF16");
    println!("bf16:             {bf16}");
    // int8 runs with AVX-512 VNNI (or on AMX tiles) where the kernels are AVX-512 ones and the
    // CPU has it, else with AVX-VNNI where the CPU has that, else with AVX2's instructions.
    let vnni = choice.isa == Isa::Avx512 && cpu.avx512_vnni && cpu.avx512bw;
    let named = match (vnni, cpu.avx_vnni) {
        (true, _) => "AVX-512 VNNI",
        (false, true) => "AVX-VNNI",
        (false, false) => "AVX2",
    };
    let int8 = reduced_line(Precision::Int8, choice.isa, vnni && cpu.amx_int8, named);
    println!("int8:             {int8}");
    println!("threads:          {threads} (RAYON_NUM_THREADS sets them)");
    println!("backends:         {}", backends.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// What `--precision` does with `precision` on this CPU, for `isa`: how its products run where
/// it is native (on AMX tiles where the CPU has them, `tiles`, and they are allowed; else with
/// the instruction set `named`), else what runs instead and why, as [`resolve`] tells it.
fn reduced_line(precision: Precision, isa: Isa, tiles: bool, named: &str) -> String {
    if precision.is_native(isa) {
        let how = match (tiles, amx_allowed()) {
            (true, true) => "products on AMX tiles".to_string(),
            (true, false) => format!("products with {named}: {AMX_VARIABLE} keeps AMX off"),
            (false, _) => format!("products with {named}"),
        };
        return format!("native ({how}): --precision {precision} computes in {precision}");
    }
    let runs = precision.fallback(isa);
    let lacks = resolve(Some(isa), precision)
        .fallbacks()
        .into_iter()
        .find_map(|fallback| match fallback {
            Fallback::Precision { cpu_lacks, .. } => cpu_lacks,
            Fallback::Isa { .. } => None,
        });
    match lacks {
        None => format!("not with {isa}: --precision {precision} runs {runs}"),
        Some(feature) => format!("not native (no {feature}): --precision {precision} runs {runs}"),
    }
}
