//! The `hoist` command: a thin layer over the `hoist` library's facade.

mod log;
mod output;
mod progress;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use hoist::{
    Client, ClientOptions, Credentials, ImageSource, Limits, Op, Platform, Progress,
    RegistryOptions, RetryPolicy,
};
use hoist_serve::ServeOptions;

#[derive(Parser)]
#[command(
    name = "hoist",
    version,
    about = "Container images to VM root filesystems and disks, without a daemon or root"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Global {
    /// Cache base directory (the OCI layout lives in a versioned subdirectory).
    #[arg(long, global = true, env = "HOIST_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Platform to select from multi-platform images [default: linux/<host arch>].
    #[arg(long, global = true, value_name = "OS/ARCH[/VARIANT]")]
    platform: Option<String>,
    /// Reach this registry over plain HTTP or TLS without verification (repeatable).
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    insecure_registry: Vec<String>,
    /// containerd-style registry host configuration: mirrors and pull-through
    /// caches from DIR/HOST[:PORT]/hosts.toml (or DIR/_default/hosts.toml).
    #[arg(long, global = true, env = "HOIST_HOSTS_DIR", value_name = "DIR")]
    hosts_dir: Option<PathBuf>,
    /// Extra trusted CA certificates, PEM (repeatable).
    #[arg(long = "ca-cert", global = true, value_name = "FILE")]
    ca_cert: Vec<PathBuf>,
    /// Credentials for this run.
    #[arg(
        long,
        global = true,
        value_name = "USER[:PASS]",
        conflicts_with = "username"
    )]
    creds: Option<String>,
    /// Username; the password comes from --password-stdin.
    #[arg(long, global = true, requires = "password_stdin")]
    username: Option<String>,
    /// Read the password from standard input.
    #[arg(long, global = true, requires = "username")]
    password_stdin: bool,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// Less output (no progress bars).
    #[arg(short, long, global = true)]
    quiet: bool,
    /// More output (repeat for more); RUST_LOG works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Attempts per request for connection errors, 408 and 5xx.
    #[arg(long, global = true, default_value_t = RetryPolicy::default().max_attempts, value_name = "N")]
    retries: u32,
    /// Stop retrying a request after this many seconds.
    #[arg(long, global = true, default_value_t = RetryPolicy::default().max_elapsed.as_secs(), value_name = "SECS")]
    retry_max_time: u64,
    /// On HTTP 429, wait for Retry-After (up to SECS, default 300) instead of failing.
    #[arg(long, global = true, value_name = "SECS", num_args = 0..=1, require_equals = true, default_missing_value = "300")]
    retry_rate_limit: Option<u64>,
    /// Refuse manifests, indexes and configs larger than this.
    #[arg(long, global = true, value_parser = parse_size, default_value_t = RegistryOptions::default().max_manifest_size, value_name = "BYTES")]
    max_manifest_size: u64,
    /// Fail (and retry) a read that stalls this long.
    #[arg(long, global = true, default_value_t = RegistryOptions::default().stall_timeout.as_secs(), value_name = "SECS")]
    timeout: u64,
    /// Blobs downloaded at once.
    #[arg(long, global = true, default_value_t = ClientOptions::default().concurrency, value_name = "N")]
    concurrency: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Hard limits on untrusted images (unpack, export, serve).
#[derive(clap::Args, Clone)]
struct LimitArgs {
    /// Refuse an image whose layers inflate to more than this (e.g. 64G).
    #[arg(long, global = true, value_parser = parse_size, default_value_t = Limits::default().max_image_bytes, value_name = "BYTES")]
    max_image_bytes: u64,
    /// Refuse an image with more tar entries than this.
    #[arg(long, global = true, default_value_t = Limits::default().max_entries, value_name = "N")]
    max_entries: u64,
    /// Refuse an image with more layers than this.
    #[arg(long, global = true, default_value_t = Limits::default().max_layers, value_name = "N")]
    max_layers: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_image_bytes: self.max_image_bytes,
            max_entries: self.max_entries,
            max_layers: self.max_layers,
            ..Limits::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Resolve an image and show its metadata (no layer is fetched).
    Inspect {
        /// Image reference (alpine, host:5000/a/b:tag, name@sha256:…) or oci:PATH[:TAG].
        image: String,
    },
    /// Pull an image into the cache and print its platform manifest digest.
    Pull { image: String },
    /// Pull if needed and write the image's root filesystem to DIR.
    Unpack {
        image: String,
        /// Must not exist, or be empty; it appears only when complete.
        dir: PathBuf,
        /// preserve: the tar's uid/gid (default as root); caller: everything
        /// owned by you, true owners recorded in the cache (default otherwise).
        #[arg(long, value_enum)]
        ownership: Option<OwnershipArg>,
        /// Also write the metadata (JSON) to this file.
        #[arg(long, value_name = "FILE")]
        metadata_out: Option<PathBuf>,
        /// Re-hash every layer blob read from the cache.
        #[arg(long)]
        verify_blobs: bool,
    },
    /// Pull as needed, then write a bootable disk image (ext4, erofs or
    /// cpio, each written straight from the layers).
    Export {
        image: String,
        /// The image file to write (atomically).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[arg(long, value_enum, default_value = "ext4")]
        format: FormatArg,
        /// Fixed ext4 size (e.g. 512M, 2G); default: the tree plus a computed margin.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// gzip the cpio archive.
        #[arg(long)]
        gzip: bool,
        /// Compress erofs file data (as `mkfs.erofs -zlz4`; Linux 5.13+ mounts it).
        #[arg(long, value_enum, value_name = "ALGO")]
        compress: Option<CompressArg>,
        /// erofs: keep file data in one erofs file per layer in DIR, shared
        /// by every image exported there; OUTPUT is a small META image
        /// that names them as its devices (Linux 5.16+:
        /// `mount -t erofs -o device=LAYER1,device=LAYER2… META`).
        #[arg(long, value_name = "DIR")]
        shared_layers: Option<PathBuf>,
    },
    /// List the images in the cache.
    Images,
    /// Remove names from the cache; an image goes with its last name (a
    /// digest reference removes the image). Blobs stay until `hoist gc`.
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Delete blobs that no cache entry (and no running pull) reaches, and
    /// stale temp files; print what and how many bytes.
    Gc {
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Collect this directory of layer files instead of the cache:
        /// remove every layer file no `--keep` META image names.
        #[arg(long, value_name = "DIR")]
        shared_layers: Option<PathBuf>,
        /// A META image whose layer files stay (with --shared-layers).
        #[arg(long, value_name = "META", requires = "shared_layers")]
        keep: Vec<PathBuf>,
    },
    /// Run the image service (hypeman's image API) in the foreground.
    Serve(ServeArgs),
    /// Verify every blob and image in the cache.
    Fsck {
        /// Delete corrupt blobs, stale temp files and incomplete entries.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on; anything but loopback needs a token.
    #[arg(long, default_value_t = ServeOptions::default().listen, value_name = "ADDR:PORT")]
    listen: std::net::SocketAddr,
    /// Where the cache (DIR/cache), the disks (DIR/images) and the state
    /// (DIR/state.db) live [default: $XDG_DATA_HOME/hoist or ~/.local/share/hoist].
    #[arg(long, env = "HOIST_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Builds that run at once.
    #[arg(long, default_value_t = ServeOptions::default().max_concurrent_builds, value_name = "N")]
    max_concurrent_builds: usize,
    /// Disk format of every build.
    #[arg(long, value_enum, default_value = "ext4")]
    format: FormatArg,
    /// Compress erofs file data (with --format erofs).
    #[arg(long, value_enum, value_name = "ALGO")]
    compress: Option<CompressArg>,
    /// erofs: build each image as a META disk over one erofs file per
    /// layer under DATA/layers/, shared by every image that has the layer
    /// (the record's `devices` lists them in mount order).
    #[arg(long)]
    shared_layers: bool,
    /// File holding the bearer token every endpoint but /healthz requires
    /// (or set HOIST_TOKEN).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Registries (host globs: registry.example.com, *.corp, 127.0.0.1:*)
    /// that a request may name; default: any but link-local addresses.
    #[arg(long = "allowed-registries", value_name = "PATTERN", num_args = 1..)]
    allowed_registries: Vec<String>,
    /// Open connections at most; at the cap the longest-idle one is closed
    /// for a new client [default: the descriptor limit less a reserve of
    /// 64 + 32 per concurrent build].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// The name clients push to and pull from this server as a registry
    /// (HOST[:PORT]); pushed images are named under it [default: the
    /// listen address].
    #[arg(long, value_name = "HOST[:PORT]")]
    registry_name: Option<String>,
    /// Refuse a pushed blob over this (same syntax and default as --max-image-bytes).
    #[arg(long, value_parser = parse_size, default_value_t = ServeOptions::default().max_upload_bytes, value_name = "BYTES")]
    max_upload_bytes: u64,
    /// Blob upload sessions open at once (/v2).
    #[arg(long, default_value_t = ServeOptions::default().max_upload_sessions, value_name = "N")]
    max_upload_sessions: usize,
    /// Seconds an upload session may sit idle before it is removed.
    #[arg(long, default_value_t = ServeOptions::default().upload_timeout.as_secs(), value_name = "SECS")]
    upload_timeout: u64,
    /// Seconds a client has to send a request's headers.
    #[arg(long, default_value_t = ServeOptions::default().header_timeout.as_secs(), value_name = "SECS")]
    header_timeout: u64,
    /// Seconds a kept-alive connection may sit with no request before it is closed.
    #[arg(long, default_value_t = ServeOptions::default().idle_timeout.as_secs(), value_name = "SECS")]
    idle_timeout: u64,
}

fn serve(g: &Global, a: &ServeArgs) -> anyhow::Result<()> {
    if a.compress.is_some() && !matches!(a.format, FormatArg::Erofs) {
        bail!(Usage("--compress applies to --format erofs".into()));
    }
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(hoist_serve::default_data_dir);
    let mut opts = options(g)?;
    opts.cache_dir = data_dir.join("cache");
    // A POSTed name makes the server connect where the caller chose.
    opts.registry.refuse_link_local = true;
    let token = match &a.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Usage(format!("--token-file {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("HOIST_TOKEN").ok(),
    }
    .filter(|t| !t.is_empty());
    let client = Client::new(opts)?;
    hoist_serve::run(
        client,
        hoist_serve::ServeOptions {
            listen: a.listen,
            data_dir,
            max_concurrent_builds: a.max_concurrent_builds,
            format: match a.format {
                FormatArg::Ext4 => hoist::Format::Ext4,
                FormatArg::Erofs => hoist::Format::Erofs {
                    lz4: a.compress.is_some(),
                },
                FormatArg::Cpio => hoist::Format::Cpio { gzip: false },
            },
            token,
            allowed_registries: a.allowed_registries.clone(),
            limits: g.limits.limits(),
            max_connections: a.max_connections.filter(|n| *n > 0),
            registry_name: a.registry_name.clone(),
            max_upload_bytes: a.max_upload_bytes,
            max_upload_sessions: a.max_upload_sessions.max(1),
            upload_timeout: Duration::from_secs(a.upload_timeout.max(1)),
            header_timeout: Duration::from_secs(a.header_timeout.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
            shared_layers: a.shared_layers,
        },
    )
    .map_err(|e| match e {
        hoist_serve::ServeError::NoToken(_) => anyhow::Error::new(Usage(e.to_string())),
        e => anyhow::Error::new(e),
    })
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompressArg {
    Lz4,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Ext4,
    Erofs,
    Cpio,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let m: u64 = match mult
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(format!("bad size suffix in {s:?} (use K, M, G, T)")),
    };
    n.checked_mul(m)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OwnershipArg {
    Preserve,
    Caller,
}

/// Errors that are the user's to fix: exit code 2.
#[derive(Debug)]
struct Usage(String);
impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

fn init_logging(g: &Global) {
    let default = match (g.quiet, g.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,hoist=debug",
        (false, _) => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(log::SafeStderr)
        .with_ansi(log::colour_on_stderr())
        .with_target(false)
        .init();
}

fn options(g: &Global) -> anyhow::Result<ClientOptions> {
    let mut o = ClientOptions::default();
    if let Some(d) = &g.cache_dir {
        o.cache_dir = d.clone();
    }
    if let Some(p) = &g.platform {
        o.platform = p.parse::<Platform>().map_err(|e| Usage(e.to_string()))?;
    }
    let mut r = RegistryOptions {
        insecure_registries: g.insecure_registry.clone(),
        max_manifest_size: g.max_manifest_size,
        rate_limit_wait: g.retry_rate_limit.map(Duration::from_secs),
        stall_timeout: Duration::from_secs(g.timeout.max(1)),
        ..RegistryOptions::default()
    };
    if let Some(d) = &g.hosts_dir {
        if !d.is_dir() {
            bail!(Usage(format!(
                "--hosts-dir {}: not a directory",
                d.display()
            )));
        }
        r.resolver = std::sync::Arc::new(hoist::HostsDir::new(d));
    }
    r.retry.max_attempts = g.retries.max(1);
    r.retry.max_elapsed = Duration::from_secs(g.retry_max_time);
    for f in &g.ca_cert {
        let pem = std::fs::read(f).map_err(|e| Usage(format!("--ca-cert {}: {e}", f.display())))?;
        r.ca_certs_pem.push(pem);
    }
    if let Some(c) = &g.creds {
        r.credentials = Some(Credentials::parse(c));
    } else if let Some(u) = &g.username {
        let mut pass = String::new();
        std::io::stdin()
            .read_to_string(&mut pass)
            .context("reading the password from stdin")?;
        let pass = pass.trim_end_matches(['\n', '\r']).to_string();
        if pass.is_empty() {
            bail!(Usage("--password-stdin: standard input was empty".into()));
        }
        r.credentials = Some(Credentials {
            username: u.clone(),
            password: pass,
        });
    }
    o.registry = r;
    o.concurrency = g.concurrency.max(1);
    Ok(o)
}

/// The context of the command's one operation: progress bars on a
/// terminal, and the limits.
fn op(g: &Global) -> Op {
    let mut op = Op::new().with_limits(g.limits.limits());
    if !g.quiet && !g.json && std::io::stderr().is_terminal() {
        op = op.with_progress(Arc::new(progress::Bars::new()) as Arc<dyn Progress>);
    }
    op
}

fn source(s: &str) -> anyhow::Result<ImageSource> {
    Ok(s.parse::<ImageSource>().map_err(|e| Usage(e.to_string()))?)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let g = &cli.global;
    if let Command::Serve(a) = &cli.command {
        return serve(g, a);
    }
    let opts = options(g)?;
    let client = Client::new(opts)?;
    let op = op(g);
    match &cli.command {
        Command::Inspect { image } => {
            let i = client.inspect(&source(image)?, &op)?;
            output::inspection(&i, g.json)
        }
        Command::Pull { image } => {
            let p = client.pull(&source(image)?, &op)?;
            output::pulled(&p, g.json, g.quiet)
        }
        Command::Unpack {
            image,
            dir,
            ownership,
            metadata_out,
            verify_blobs,
        } => {
            let opts = hoist::UnpackOptions {
                ownership: ownership.map(|o| match o {
                    OwnershipArg::Preserve => hoist::Ownership::Preserve,
                    OwnershipArg::Caller => hoist::Ownership::Caller,
                }),
                verify_blobs: *verify_blobs,
            };
            let u = client.unpack(&source(image)?, dir, &opts, &op)?;
            if let Some(f) = metadata_out {
                std::fs::write(f, serde_json::to_vec_pretty(&u)?)
                    .with_context(|| format!("writing {}", f.display()))?;
            }
            output::unpacked(&u, g.json)
        }
        Command::Export {
            image,
            output: out,
            format,
            size,
            gzip,
            compress,
            shared_layers,
        } => {
            if shared_layers.is_some() && !matches!(format, FormatArg::Erofs) {
                bail!(Usage("--shared-layers applies to --format erofs".into()));
            }
            if *gzip && !matches!(format, FormatArg::Cpio) {
                bail!(Usage("--gzip applies to --format cpio".into()));
            }
            if compress.is_some() && !matches!(format, FormatArg::Erofs) {
                bail!(Usage("--compress applies to --format erofs".into()));
            }
            if size.is_some() && !matches!(format, FormatArg::Ext4) {
                bail!(Usage("--size applies to --format ext4".into()));
            }
            let opts = hoist::ExportOptions {
                format: match format {
                    FormatArg::Ext4 => hoist::Format::Ext4,
                    FormatArg::Erofs => hoist::Format::Erofs {
                        lz4: compress.is_some(),
                    },
                    FormatArg::Cpio => hoist::Format::Cpio { gzip: *gzip },
                },
                size: *size,
                shared_layers: shared_layers.clone(),
            };
            let e = client.export(&source(image)?, out, &opts, &op)?;
            output::exported(&e, g.json)
        }
        Command::Serve(_) => unreachable!("handled above"),
        Command::Images => output::images(&client.images()?, g.json),
        Command::Rm { images } => {
            let srcs = images
                .iter()
                .map(|i| source(i))
                .collect::<anyhow::Result<Vec<_>>>()?;
            output::removed(&client.remove(&srcs)?, g.json)
        }
        Command::Gc {
            dry_run,
            shared_layers: Some(dir),
            keep,
        } => {
            let mut kept = std::collections::BTreeSet::new();
            for m in keep {
                kept.extend(
                    hoist::meta_devices(m).with_context(|| format!("reading {}", m.display()))?,
                );
            }
            let r = hoist::LayerDir::open(dir)?.gc(&kept, *dry_run)?;
            output::layer_gc(&r, *dry_run, g.json)
        }
        Command::Gc { dry_run, .. } => output::gc(&client.gc(*dry_run)?, g.json),
        Command::Fsck { repair } => {
            let r = client.fsck(*repair)?;
            output::fsck(&r, g.json)?;
            if !r.is_clean() && !*repair {
                std::process::exit(hoist::ErrorKind::Integrity.exit_code());
            }
            Ok(())
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    match e.downcast_ref::<hoist::Error>() {
        Some(h) => h.kind().exit_code(),
        None => 1,
    }
}

/// The error and its causes, each said once: hoist's errors mostly name
/// their cause in their own message already.
fn message(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !msg.contains(&t) {
            msg.push_str(": ");
            msg.push_str(&t);
        }
        src = s.source();
    }
    msg
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(&cli.global);
    let json = cli.global.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            let msg = message(&e);
            if json {
                let v = serde_json::json!({"error": msg, "exit_code": code});
                println!("{v}");
            }
            eprintln!("hoist: error: {}", hoist::escape_controls(&msg));
            ExitCode::from(code as u8)
        }
    }
}
