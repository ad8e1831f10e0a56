fn main() {
    std::process::exit(tunstack::cli::main());
}
