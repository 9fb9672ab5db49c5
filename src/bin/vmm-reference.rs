//! The `vmm-reference` command: see [`vmm_reference::cli`].

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::process::exit(vmm_reference::cli::main(argv));
}
