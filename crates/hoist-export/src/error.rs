use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ExportError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the image: {0}")]
    Write(#[source] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0} changed while it was being exported")]
    Changed(String),
    #[error("{tool} is not installed (Debian package {package})")]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error(
        "the contents need at least {needed} bytes, more than the requested size of {size} bytes"
    )]
    TooSmall { size: u64, needed: u64 },
}

impl ExportError {
    pub(crate) fn io(op: &'static str, path: &Path, source: std::io::Error) -> ExportError {
        ExportError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

/// Run a tool, mapping "not installed" and failures to typed errors.
pub(crate) fn run(
    tool: &'static str,
    package: &'static str,
    cmd: &mut std::process::Command,
) -> Result<std::process::Output, ExportError> {
    let out = cmd.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ExportError::MissingTool { tool, package },
        _ => ExportError::Tool {
            tool,
            status: "could not start".into(),
            stderr: e.to_string(),
        },
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).to_string();
        stderr.push_str(&String::from_utf8_lossy(&out.stdout));
        stderr.truncate(4000);
        return Err(ExportError::Tool {
            tool,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(out)
}
