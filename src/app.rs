//! The `cadre` command line: `cadre serve` runs a node, `cadre agent` a worker node that joins
//! one; the other subcommands are the client of its HTTP API; `cadre demo` shows a supervision
//! tree at work. [`main`] is the whole program, so
//! a node with extensions is a `main` that calls `cadre::app::main(extensions)`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::collections::BTreeMap;

use cadre_runtime::{Agent, Config, Extensions, Flags, LogFormat, Node};

use crate::cli::{CliError, Client, Output, SubmitArgs};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cadre",
    version,
    about = "a supervised actor runtime for running jobs on CPU and GPU machines"
)]
struct Cli {
    /// The node's API, for client commands.
    #[arg(
        long,
        global = true,
        env = "CADRE_API",
        default_value = "http://127.0.0.1:7070"
    )]
    api: String,
    /// Output format of client commands.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "text"
    )]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

/// What `serve` and `agent` share.
#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// A TOML config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (journal and job logs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Prometheus endpoint address.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Log format.
    #[arg(long, value_enum)]
    log_format: Option<LogFormatArg>,
    /// This node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// This node's datacenter.
    #[arg(long)]
    datacenter: Option<String>,
    /// Plain TCP between the scheduler and its agents: no authentication, no encryption.
    #[arg(long)]
    insecure_cluster: bool,
    /// The cluster CA's certificate (`cadre certs ca`).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// This node's certificate (`cadre certs node NAME`).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long)]
    tls_key: Option<PathBuf>,
}

impl NodeArgs {
    fn flags(self) -> Flags {
        Flags {
            config: self.config,
            data_dir: self.data_dir,
            metrics_addr: self.metrics_addr,
            log_format: self.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
            node_name: self.name,
            datacenter: self.datacenter,
            insecure_cluster: self.insecure_cluster,
            tls_ca: self.tls_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            ..Flags::default()
        }
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// The cluster CA: DIR/ca.crt and DIR/ca.key (never overwritten).
    Ca {
        /// Where to write them.
        #[arg(long, default_value = "cadre-certs")]
        dir: PathBuf,
    },
    /// A node's certificate, signed by the CA in DIR: DIR/NAME.crt and DIR/NAME.key. An agent's
    /// must name its node (--name); a scheduler's, the host its agents dial.
    Node {
        /// The node's name.
        name: String,
        /// Where the CA is, and where to write them.
        #[arg(long, default_value = "cadre-certs")]
        dir: PathBuf,
        /// More names it answers to (host names, IP addresses), comma-separated.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
}

fn certs(command: CertsCommand) -> ExitCode {
    use cadre_runtime::cluster::certs;
    let made = match command {
        CertsCommand::Ca { dir } => certs::create_ca(&dir),
        CertsCommand::Node { name, dir, san } => certs::create_node(&dir, &name, &san),
    };
    match made {
        Ok((cert, key)) => {
            println!("{}\n{}", cert.display(), key.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: scheduler, worker, API and metrics.
    Serve {
        #[command(flatten)]
        common: NodeArgs,
        /// API address.
        #[arg(long)]
        api_addr: Option<SocketAddr>,
        /// Also accept agents on this address (`cadre agent --join`).
        #[arg(long)]
        cluster_addr: Option<SocketAddr>,
        /// Run no worker here: schedule for the agents only (needs --cluster-addr).
        #[arg(long)]
        no_local_worker: bool,
    },
    /// Run an agent: a worker node that joins a scheduler (`cadre serve --cluster-addr`).
    Agent {
        #[command(flatten)]
        common: NodeArgs,
        /// The schedulers' cluster addresses, HOST:PORT[,HOST:PORT...].
        #[arg(long, value_delimiter = ',', required = true)]
        join: Vec<String>,
        /// This agent's labels, KEY=VALUE[,KEY=VALUE...].
        #[arg(long, value_delimiter = ',', value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Submit a job; prints its id.
    Submit(SubmitArgs),
    /// Show one job.
    Status {
        /// The job's id.
        id: u64,
    },
    /// List jobs.
    List {
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only jobs after this id.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        id: u64,
    },
    /// Print a job's output.
    Logs {
        /// Follow until the job ends.
        #[arg(short, long)]
        follow: bool,
        /// stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// The job's id.
        id: u64,
    },
    /// Live progress and state changes (a redrawn view on a terminal, lines elsewhere).
    Watch {
        /// Only this job, until it ends.
        id: Option<u64>,
    },
    /// The supervision tree's failure journal.
    Failures,
    /// Workers and capacity.
    Nodes,
    /// Stop placing new work on a node; its running jobs finish (--undo: take work again).
    Drain {
        /// The node's name.
        node: String,
        /// Take work again.
        #[arg(long)]
        undo: bool,
    },
    /// Create the cluster's certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// A live supervision tree demo.
    Demo {
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// Which node `cadre` runs.
enum Role {
    Serve,
    Agent,
}

fn serve(role: Role, flags: Flags, extensions: Extensions) -> ExitCode {
    let config = match Config::load(&flags, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    cadre_runtime::init_tracing(config.log_format);
    let exporter = match cadre_runtime::metrics::install() {
        Ok(e) => Some(e),
        Err(error) => {
            tracing::error!(%error, "metrics exporter not installed; /metrics answers 503");
            None
        }
    };
    // Each running job holds about a dozen descriptors in the node. Logged either way (and a
    // failure counted, once the recorder is there); the node runs on with the limit it has.
    cadre_cpu::rlimit::raise_open_files_logged();
    let result = actix::System::new().block_on(async move {
        match role {
            Role::Serve => Node::start(config, exporter, extensions).await?.run().await,
            Role::Agent => {
                Agent::start(config, exporter, extensions)
                    .await?
                    .run()
                    .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cadre node failed");
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn demo(seconds: Option<u64>) -> ExitCode {
    cadre_runtime::init_tracing(LogFormat::Text);
    let duration = seconds.filter(|s| *s > 0).map(Duration::from_secs);
    match actix::System::new().block_on(crate::demo::run(duration)) {
        Ok(records) => {
            println!("failure journal ({} entries):", records.len());
            for r in records {
                println!(
                    "  #{} {} kind={} restart_count={} reason={:?}{}",
                    r.seq,
                    r.path,
                    r.kind,
                    r.restart_count,
                    r.message,
                    r.context
                        .map_or_else(String::new, |c| format!(" context={c}"))
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "demo failed");
            ExitCode::from(1)
        }
    }
}

/// Parses the command line and runs it; `extensions` are registered when it serves.
pub fn main(extensions: Extensions) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            if let Err(print) = e.print() {
                eprintln!("error: {print}");
            }
            return ExitCode::from(code);
        }
    };
    let client = Client::new(&cli.api, cli.output);
    let result: Result<(), CliError> = match cli.command {
        Command::Serve {
            common,
            api_addr,
            cluster_addr,
            no_local_worker,
        } => {
            let flags = Flags {
                api_addr,
                cluster_addr,
                no_local_worker,
                ..common.flags()
            };
            return serve(Role::Serve, flags, extensions);
        }
        Command::Agent {
            common,
            join,
            labels,
        } => {
            let flags = Flags {
                join: Some(join),
                labels: (!labels.is_empty())
                    .then(|| labels.into_iter().collect::<BTreeMap<_, _>>()),
                ..common.flags()
            };
            return serve(Role::Agent, flags, extensions);
        }
        Command::Demo { seconds } => return demo(seconds),
        Command::Certs(command) => return certs(command),
        Command::Submit(args) => client.submit(args),
        Command::Status { id } => client.status(id),
        Command::List {
            state,
            limit,
            after,
        } => client.list(state.as_deref(), limit, after),
        Command::Cancel { id } => client.cancel(id),
        Command::Logs { follow, stderr, id } => client.logs(id, follow, stderr),
        Command::Watch { id } => client.watch(id),
        Command::Failures => client.failures(),
        Command::Nodes => client.nodes(),
        Command::Drain { node, undo } => client.drain(&node, undo),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}
