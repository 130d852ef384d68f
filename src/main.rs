use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    sret_tome::io::files::ignore_file_size_signal();
    let cli = sret_tome::cli::Cli::parse();
    // Before anything opens a GPU (and while this process has one thread): llvmpipe reads its
    // vector width once, when the Vulkan driver loads.
    let current = std::env::var(sret_tome::cli::LP_VECTOR_WIDTH_VAR).ok();
    let (set, why) = sret_tome::cli::vector_width_decision(
        cli.vector_width,
        current.as_deref(),
        sret_tome::cli::cpu_has_avx512f(),
        sret_tome::cli::lavapipe_mesa_version,
    );
    if let Some(v) = set {
        std::env::set_var(sret_tome::cli::LP_VECTOR_WIDTH_VAR, v);
    }
    if cli.vector_width.is_some() {
        eprintln!("{why}");
    } else {
        log::info!("{why}");
    }
    match cli.autotune_env() {
        Ok(Some(v)) => std::env::set_var("SRET_TOME_AUTOTUNE", v),
        Ok(None) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match sret_tome::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
