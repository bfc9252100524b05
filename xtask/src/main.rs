//! `cargo xtask`: the CI side of the product. See `cargo xtask --help`.

fn main() -> std::process::ExitCode {
    xtask::main()
}
