//! The `medrelay` server binary.
fn main() {
    println!("medrelay {}", env!("CARGO_PKG_VERSION"));
}
