//! The supervision demo as an example: `cargo run --example supervision_tree` runs it for ten
//! seconds and prints the failure journal (see `cadre::demo`).

use std::time::Duration;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    match actix::System::new().block_on(cadre::demo::run(Some(Duration::from_secs(10)))) {
        Ok(records) => {
            for r in records {
                println!("{} {} {}: {}", r.seq, r.path, r.kind, r.message);
            }
        }
        Err(error) => {
            eprintln!("demo failed: {error}");
            std::process::exit(1);
        }
    }
}
