//! Who may call what on the admin port: an operator token (everything) and a read-only token
//! (`/metrics`, `/scaler`, `/admin/cluster`), so Prometheus and KEDA never hold a credential
//! that can drain the fleet or publish.
//!
//! Tokens come from files (a Kubernetes Secret mounted as a volume), read once at start. They
//! are compared as SHA-256 digests in constant time, so neither their content nor their length
//! leaks through timing, and they are never logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Config;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `GET /metrics`, `GET /scaler`, `GET /admin/cluster`.
    Read,
    /// Everything else: drain, undrain, drain-peer, publish, the server API.
    Operator,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--{flag} {}: {error}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--{flag} {}: the file is empty", path.display())]
    Empty { flag: &'static str, path: PathBuf },
    #[error(
        "--metrics-token-file holds the operator token: the read-only credential must differ, or \
         Prometheus could drain pods"
    )]
    SameAsOperator,
}

/// The admin port's credentials; `operator: None` leaves the port open (loopback only, or
/// `--admin-insecure`).
#[derive(Clone, Default)]
pub struct AdminTokens {
    operator: Option<[u8; 32]>,
    read: Option<[u8; 32]>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminTokens")
            .field("operator", &self.operator.is_some())
            .field("read", &self.read.is_some())
            .finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// The token in `path`, less trailing line breaks.
fn read_token(flag: &'static str, path: &Path) -> Result<[u8; 32], TokenError> {
    let text = std::fs::read(path).map_err(|error| TokenError::Unreadable {
        flag,
        path: path.to_owned(),
        error,
    })?;
    let end = text
        .iter()
        .rposition(|b| !matches!(b, b'\n' | b'\r'))
        .map_or(0, |i| i + 1);
    if end == 0 {
        return Err(TokenError::Empty {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(digest(&text[..end]))
}

impl AdminTokens {
    /// Reads `--admin-token-file` (or `--admin-token`) and `--metrics-token-file`.
    pub fn load(config: &Config) -> Result<Self, TokenError> {
        let operator = match (&config.admin_token_file, &config.admin_token) {
            (Some(path), _) => Some(read_token("admin-token-file", path)?),
            (None, Some(token)) => Some(digest(token.as_bytes())),
            (None, None) => None,
        };
        let read = config
            .metrics_token_file
            .as_deref()
            .map(|path| read_token("metrics-token-file", path))
            .transpose()?;
        if read.is_some() && read == operator {
            return Err(TokenError::SameAsOperator);
        }
        Ok(Self { operator, read })
    }

    /// The scope `headers` grant: `None` for no or a wrong token.
    fn granted(&self, headers: &HeaderMap) -> Option<Scope> {
        let Some(operator) = &self.operator else {
            return Some(Scope::Operator);
        };
        // Through the Kubernetes pod proxy `Authorization` is dropped: accept our own header too.
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| {
                headers
                    .get("x-gateway-admin-token")
                    .and_then(|v| v.to_str().ok())
            })?;
        let presented = digest(presented.as_bytes());
        if bool::from(presented.ct_eq(operator)) {
            return Some(Scope::Operator);
        }
        match &self.read {
            Some(read) if bool::from(presented.ct_eq(read)) => Some(Scope::Read),
            _ => None,
        }
    }
}

/// Middleware: 401 without a valid token, 403 when the token's scope is too small.
pub async fn require(
    State((tokens, needed)): State<(Arc<AdminTokens>, Scope)>,
    request: Request,
    next: Next,
) -> Response {
    match (tokens.granted(request.headers()), needed) {
        (None, _) => (StatusCode::UNAUTHORIZED, "admin token required").into_response(),
        (Some(Scope::Read), Scope::Operator) => (
            StatusCode::FORBIDDEN,
            "this token may only read /metrics, /scaler and /admin/cluster",
        )
            .into_response(),
        (Some(Scope::Operator), _) | (Some(Scope::Read), Scope::Read) => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn files_lose_their_trailing_newline_and_scopes_are_separate() {
        let dir = std::env::temp_dir().join(format!("admin-scope-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (op, read, empty) = (dir.join("op"), dir.join("read"), dir.join("empty"));
        std::fs::write(&op, "operator-secret\n").unwrap();
        std::fs::write(&read, "metrics-secret\r\n").unwrap();
        std::fs::write(&empty, "\n").unwrap();
        let mut c = Config::embedded_default();
        c.admin_token_file = Some(op.clone());
        c.metrics_token_file = Some(read.clone());
        let tokens = AdminTokens::load(&c).unwrap();
        assert_eq!(
            tokens.granted(&bearer("operator-secret")),
            Some(Scope::Operator)
        );
        assert_eq!(tokens.granted(&bearer("metrics-secret")), Some(Scope::Read));
        assert_eq!(tokens.granted(&bearer("operator-secre")), None);
        assert_eq!(tokens.granted(&bearer("")), None);
        assert_eq!(tokens.granted(&HeaderMap::new()), None);
        assert!(!format!("{tokens:?}").contains("secret"));
        c.metrics_token_file = Some(op.clone());
        assert!(matches!(
            AdminTokens::load(&c),
            Err(TokenError::SameAsOperator)
        ));
        c.metrics_token_file = Some(empty);
        let err = AdminTokens::load(&c).unwrap_err().to_string();
        assert!(
            err.starts_with("--metrics-token-file ") && err.ends_with("empty"),
            "{err}"
        );
        c.admin_token_file = Some(dir.join("missing"));
        let err = AdminTokens::load(&c).unwrap_err().to_string();
        assert!(err.starts_with("--admin-token-file "), "{err}");
        // No operator token: the port is open (loopback or --admin-insecure).
        let open = AdminTokens::load(&Config::embedded_default()).unwrap();
        assert_eq!(open.granted(&HeaderMap::new()), Some(Scope::Operator));
        let _ = std::fs::remove_dir_all(dir);
    }
}
