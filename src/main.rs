//! The `cadre` binary: the command line of [`cadre::app`] with no extensions.

use std::process::ExitCode;

fn main() -> ExitCode {
    cadre::app::main(cadre::runtime::Extensions::new())
}
