fn main() {
    eprintln!("dfrt: CLI not built yet");
    std::process::exit(2);
}
