//! Deploying a release's servers: the [`Deploy`] seam (a command in production and in the
//! pipeline; `ci/deploy.sh` locally) and the rule that finds or redeploys a release's backends.

use std::time::Duration;

use sqlx::PgPool;

use crate::controller::ControlError;
use crate::readiness::wait_ready;
use crate::store;

/// Why a deploy step failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The command could not start.
    #[error("running {command:?}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command failed.
    #[error("{command:?} exited with {status}")]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
    },
    /// The command printed no URL.
    #[error("{command:?} printed no backend URL")]
    NoUrl {
        /// The command.
        command: String,
    },
    /// Any other deploy step's failure (a step written as a library).
    #[error("{0}")]
    Other(String),
}

/// What a deploy step gets: the release to (re)start servers for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployment {
    /// The release.
    pub release_id: i64,
    /// Its tag.
    pub tag: String,
    /// Its strategy and parameters.
    pub strategy: String,
    /// Parameters (JSON object).
    pub params: serde_json::Value,
    /// The model version its servers must report.
    pub model_version: String,
}

/// Starts servers for a release and returns their base URLs once started (the controller waits
/// for `/ready` and checks the model version). The command-line controller runs a command
/// (`--deploy-command`, e.g. `ci/deploy.sh` or a systemd/Kubernetes script).
#[async_trait::async_trait]
pub trait Deploy: Send + Sync {
    /// Deploys `d`; the URLs of its backends.
    async fn deploy(&self, d: &Deployment) -> Result<Vec<String>, DeployError>;
}

/// A deploy step that runs `command STRATEGY TAG` (environment: `LAZYREC_RELEASE_ID`,
/// `LAZYREC_RELEASE_PARAMS`, `LAZYREC_MODEL_VERSION`, `DEPLOY_ROLE`); it prints the backends'
/// URLs, one per line, on stdout.
pub struct CommandDeploy {
    /// The command (run by `sh -c`, so it may carry arguments).
    pub command: String,
    /// `nightly` or `rollback` (the local deploy script picks a free slot either way).
    pub role: String,
}

#[async_trait::async_trait]
impl Deploy for CommandDeploy {
    async fn deploy(&self, d: &Deployment) -> Result<Vec<String>, DeployError> {
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} \"$0\" \"$1\"", self.command))
            .arg(&d.strategy)
            .arg(&d.tag)
            .env("LAZYREC_RELEASE_ID", d.release_id.to_string())
            .env("LAZYREC_RELEASE_PARAMS", d.params.to_string())
            .env("LAZYREC_MODEL_VERSION", &d.model_version)
            .env("DEPLOY_ROLE", &self.role)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .map_err(|source| DeployError::Spawn { command: self.command.clone(), source })?;
        if !output.status.success() {
            return Err(DeployError::Failed { command: self.command.clone(), status: output.status });
        }
        let urls: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("http://") || l.starts_with("https://"))
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Err(DeployError::NoUrl { command: self.command.clone() });
        }
        Ok(urls)
    }
}

/// The backends that serve release `id` now: its recorded ones when they answer `/ready` with
/// its model version, else freshly deployed from its record by `deploy` (an error without one).
pub async fn serving_backends(
    pool: &PgPool,
    id: i64,
    deploy: Option<&dyn Deploy>,
    ready_within: Duration,
) -> Result<(Vec<String>, Option<Vec<String>>), ControlError> {
    let store::Record { tag, strategy, params, model_version, .. } = store::record(pool, id).await?;
    let recorded = store::deployed_backends(pool, id).await?;
    let gone = if recorded.is_empty() {
        "it was never deployed: no backends recorded".to_string()
    } else {
        match wait_ready(&recorded, Duration::from_secs(2), Some(&model_version)).await {
            Ok(()) => return Ok((recorded, None)),
            Err(e) => e.to_string(),
        }
    };
    let Some(deploy) = deploy else {
        return Err(ControlError::NoDeployStep { id, gone });
    };
    tracing::info!(release = id, %gone, "redeploying the release from its record");
    let d = Deployment { release_id: id, tag, strategy, params, model_version };
    let urls = deploy.deploy(&d).await.map_err(|source| ControlError::Deploy { id, source })?;
    wait_ready(&urls, ready_within, Some(&d.model_version)).await?;
    Ok((urls, Some(recorded)))
}
