//! vmvaultd: the vmvault daemon.

fn main() {
    eprintln!("vmvaultd: not yet implemented");
    std::process::exit(1);
}
