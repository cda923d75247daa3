//! Files the backend flags point at, read once at start: secrets (one line, trailing newline
//! trimmed) and PEM certificates and keys, turned into rustls client configurations with the
//! ring provider. Every error names the flag and the file, never what is in the file.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::backends::BackendConfigError;

/// A flag and the file it names.
pub(super) type FileFlag<'a> = (&'static str, &'a Path);

fn read(flag: FileFlag<'_>) -> Result<Vec<u8>, BackendConfigError> {
    let (flag, path) = flag;
    std::fs::read(path).map_err(|e| BackendConfigError::File {
        flag,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn bad_file(flag: FileFlag<'_>, reason: &str) -> BackendConfigError {
    BackendConfigError::File {
        flag: flag.0,
        path: flag.1.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The secret in a file: its text without trailing newlines. Empty is an error.
pub(super) fn read_secret(flag: FileFlag<'_>) -> Result<String, BackendConfigError> {
    let text = read_text(flag)?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// A file's whole text, as is (a `.creds` file's markers need their line ends). Empty (or
/// only newlines) is an error.
pub(super) fn read_text(flag: FileFlag<'_>) -> Result<String, BackendConfigError> {
    let bytes = read(flag)?;
    let text = String::from_utf8(bytes).map_err(|_| bad_file(flag, "is not UTF-8 text"))?;
    if text.trim_end_matches(['\r', '\n']).is_empty() {
        return Err(bad_file(flag, "is empty"));
    }
    Ok(text)
}

fn read_certs(flag: FileFlag<'_>) -> Result<Vec<CertificateDer<'static>>, BackendConfigError> {
    let bytes = read(flag)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad_file(flag, "is not a PEM file"))?;
    if certs.is_empty() {
        return Err(bad_file(flag, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(flag: FileFlag<'_>) -> Result<PrivateKeyDer<'static>, BackendConfigError> {
    let bytes = read(flag)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|_| bad_file(flag, "holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"))
}

/// What a client configuration is built from.
#[derive(Debug, Clone, Copy)]
pub(super) struct TlsFiles<'a> {
    /// The flag naming the CA file, for the "no system roots" hint.
    pub ca_flag: &'static str,
    /// CA certificates to trust instead of the system's roots.
    pub ca: Option<&'a Path>,
    /// Client certificate chain and key (mTLS).
    pub client: Option<(FileFlag<'a>, FileFlag<'a>)>,
    /// Verify the server's certificate against this name, whatever address was dialled.
    pub verify_as: Option<(&'static str, &'a str)>,
}

/// A rustls client configuration (ring provider, TLS 1.2 and 1.3) from `files`.
pub(super) fn client_config(files: TlsFiles<'_>) -> Result<ClientConfig, BackendConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    match files.ca {
        Some(path) => {
            let flag = (files.ca_flag, path);
            for cert in read_certs(flag)? {
                roots
                    .add(cert)
                    .map_err(|_| bad_file(flag, "holds a certificate that is not a valid CA"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(BackendConfigError::NoSystemRoots {
                    flag: files.ca_flag,
                });
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendConfigError::Tls(e.to_string()))?;
    let builder = match files.verify_as {
        None => builder.with_root_certificates(roots),
        Some((flag, name)) => {
            let name = ServerName::try_from(name.to_owned()).map_err(|_| {
                BackendConfigError::ServerName {
                    flag,
                    name: name.to_owned(),
                }
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| BackendConfigError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(VerifyAs { inner, name }))
        }
    };
    match files.client {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let key_der = read_key(key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                BackendConfigError::ClientKey {
                    cert: cert.0,
                    key: key.0,
                    reason: e.to_string(),
                }
            })
        }
    }
}

/// The standard WebPKI verification, against a fixed name instead of the dialled address: a
/// server reached by IP (or a Sentinel's primary, announced by IP) is still checked against the
/// DNS name its certificate carries. Nothing else is relaxed.
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn secrets_lose_trailing_newlines_only() {
        let path = temp("secret", b" pass word \r\n\n");
        assert_eq!(read_secret(("x", &path)).unwrap(), " pass word ");
        let empty = temp("empty", b"\n");
        let err = read_secret(("redis-password-file", &empty)).unwrap_err();
        assert!(
            err.to_string().starts_with("--redis-password-file "),
            "{err}"
        );
        let missing = Path::new("/nonexistent/secret");
        let err = read_secret(("nats-token-file", missing)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--nats-token-file /nonexistent/secret: "),
            "{err}"
        );
    }

    #[test]
    fn bad_pem_is_refused_without_echoing_it() {
        let path = temp("not-pem", b"hunter2-secret-material");
        let files = TlsFiles {
            ca_flag: "redis-ca-file",
            ca: Some(&path),
            client: None,
            verify_as: None,
        };
        let err = client_config(files).unwrap_err().to_string();
        assert!(err.starts_with("--redis-ca-file "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let key = temp("not-key", b"-----BEGIN PRIVATE KEY-----\nhunter2\n");
        let err = read_key(("redis-client-key", &key))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--redis-client-key "), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
