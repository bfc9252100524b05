//! `deploy-hook`: run by the CodeDeploy agent for every lifecycle event. All work is in the library.

fn main() -> std::process::ExitCode {
    hook::main(std::env::args_os())
}
