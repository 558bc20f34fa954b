//! What every binary does before and after its work: the servers' command line, logging
//! set-up, the process-wide TLS crypto provider, and turning the outcome into an exit code.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// The logging flag every binary takes.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LogArgs {
    /// Log as JSON lines instead of text (also AUTHD_LOG_JSON=1, true, yes or on).
    #[arg(
        long,
        global = true,
        env = "AUTHD_LOG_JSON",
        value_parser = clap::builder::FalseyValueParser::new(),
        num_args = 0,
        default_missing_value = "true"
    )]
    pub log_json: bool,
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call once at start-up,
/// before any TLS configuration is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`), `json` selects JSON lines.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A binary's main: sets up logging and the crypto provider, runs `work`, and reports its
/// error chain on stderr as `BINARY: error: ...` with a failing exit code.
pub async fn main(
    binary: &str,
    log: LogArgs,
    work: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    init_tracing(log.log_json);
    install_crypto_provider();
    match work.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{binary}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The allocator [`server_main!`] installs.
#[doc(hidden)]
pub use mimalloc::MiMalloc;

/// A server binary's whole `main`: mimalloc as the global allocator (the request path
/// allocates small, short-lived buffers on several threads, where glibc's arenas cost
/// ≈ 15% of the CPU: perf, warm path) and `fn main` running `serve` under the [`ServerCli`]
/// `cli` through [`ServerCli::run`].
#[macro_export]
macro_rules! server_main {
    ($cli:expr, $serve:path) => {
        #[global_allocator]
        static GLOBAL: $crate::process::MiMalloc = $crate::process::MiMalloc;

        fn main() -> ::std::process::ExitCode {
            $crate::process::ServerCli::run(&$cli, $serve)
        }
    };
}

/// A server binary's command line: `NAME [--log-json] serve --config FILE`, the file also
/// taken from the environment variable `config_env`.
#[derive(Clone, Copy, Debug)]
pub struct ServerCli {
    pub name: &'static str,
    pub about: &'static str,
    /// What `serve` does, for `--help`.
    pub serve_about: &'static str,
    pub config_env: &'static str,
}

/// The parsed command line of a [`ServerCli`].
#[derive(Debug)]
pub struct ServeArgs {
    pub log: LogArgs,
    /// The configuration file (TOML).
    pub config: PathBuf,
}

#[derive(clap::Parser)]
#[command(version)]
struct ServeCommandLine {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: ServeCommand,
}

#[derive(clap::Subcommand)]
enum ServeCommand {
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

impl ServerCli {
    /// A server binary's whole `main`: parses the command line, starts the multi-threaded
    /// Tokio runtime, and runs `serve` with the configuration file through [`main`].
    pub fn run<F>(&self, serve: impl FnOnce(PathBuf) -> F) -> ExitCode
    where
        F: Future<Output = anyhow::Result<()>>,
    {
        let args = self.parse();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{}: error: cannot start the Tokio runtime: {e}", self.name);
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(main(self.name, args.log, serve(args.config)))
    }

    /// Parses the process's arguments; on a usage error or `--help`, prints and exits as
    /// clap does.
    pub fn parse(&self) -> ServeArgs {
        self.try_parse_from(std::env::args_os())
            .unwrap_or_else(|e| e.exit())
    }

    pub fn try_parse_from<I, T>(&self, args: I) -> Result<ServeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = ServeCommandLine::command()
            .name(self.name)
            .bin_name(self.name)
            .about(self.about)
            .mut_subcommand("serve", |s| {
                s.about(self.serve_about)
                    .mut_arg("config", |a| a.env(self.config_env))
            });
        let matches = command.try_get_matches_from(args)?;
        let ServeCommandLine { log, command } = ServeCommandLine::from_arg_matches(&matches)?;
        let ServeCommand::Serve { config } = command;
        Ok(ServeArgs { log, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLI: ServerCli = ServerCli {
        name: "authd-test",
        about: "a test server",
        serve_about: "Serve the test",
        config_env: "AUTHD_RUNTIME_TEST_CONFIG",
    };

    #[test]
    fn serve_command_line() {
        let a = CLI
            .try_parse_from(["authd-test", "serve", "--config", "c.toml"])
            .expect("parses");
        assert_eq!(a.config, PathBuf::from("c.toml"));
        assert!(!a.log.log_json);
        let a = CLI
            .try_parse_from(["authd-test", "--log-json", "serve", "--config", "c.toml"])
            .expect("parses");
        assert!(a.log.log_json);
        let a = CLI
            .try_parse_from(["authd-test", "serve", "--config", "c.toml", "--log-json"])
            .expect("the flag is global");
        assert!(a.log.log_json);
        assert!(CLI.try_parse_from(["authd-test", "serve"]).is_err());
        assert!(CLI.try_parse_from(["authd-test"]).is_err());
        let help = CLI
            .try_parse_from(["authd-test", "serve", "--help"])
            .expect_err("help")
            .to_string();
        assert!(help.contains("Serve the test"), "{help}");
        assert!(help.contains("AUTHD_RUNTIME_TEST_CONFIG"), "{help}");
    }
}
