//! Throwaway TLS material made with the `openssl` CLI: a CA, a server certificate for
//! `127.0.0.1` and `localhost`, and a client certificate, all signed by that CA, plus a second
//! CA that signed none of them (to prove a client trusting the wrong CA is refused).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::find_binary;
use crate::process::TempDir;

/// PEM files in a private temp directory, removed when the last clone drops. Servers started
/// with them keep a clone, so the files outlive every server that reads them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: Arc<TempDir>,
}

impl TlsFiles {
    /// Generates everything (EC P-256 keys, valid for two days). Panics with the `openssl`
    /// output if a step fails.
    pub fn generate() -> Self {
        let dir = TempDir::new("gw-tls");
        let files = Self { dir: Arc::new(dir) };
        files.write(
            "server.ext",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
        files.write(
            "client.ext",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\nsubjectAltName=DNS:gateway-client\n",
        );
        const EC: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        for ca in ["ca", "other-ca"] {
            files.openssl(&format!(
                "req -x509 -new {EC} -days 2 -subj /CN=gateway-test-{ca} -keyout {ca}.key \
                 -out {ca}.pem -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign,cRLSign"
            ));
        }
        for (leaf, cn) in [("server", "localhost"), ("client", "gateway-client")] {
            files.openssl(&format!(
                "req -new {EC} -subj /CN={cn} -keyout {leaf}.key -out {leaf}.csr"
            ));
            files.openssl(&format!(
                "x509 -req -in {leaf}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                 -extfile {leaf}.ext -out {leaf}.pem"
            ));
        }
        files
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).expect("write openssl extension file");
    }

    /// Runs `openssl` with `args` (split on whitespace) in the directory.
    fn openssl(&self, args: &str) {
        let bin = find_binary("openssl", "OPENSSL_BIN", "`apt-get install openssl`");
        let out = Command::new(bin)
            .args(args.split_whitespace())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory holding the files (to write more test files next to them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA certificate that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A CA certificate that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }

    /// The server certificate (SAN `IP:127.0.0.1`, `DNS:localhost`).
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// A client certificate for mTLS (`extendedKeyUsage=clientAuth`).
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }
}

/// Whether a TLS server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate needed (one that is sent is still verified).
    Optional,
    /// A client certificate signed by the CA is required (mTLS).
    Required,
}
