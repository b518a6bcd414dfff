//! The dev key pair that signs and verifies local tokens, kept in a directory:
//! `private-key.pem` (PKCS#8, RSA 2048, mode 0600) and `jwks.json` (its public half as a JWKS,
//! `kid` = the key's RFC 7638 thumbprint).
//!
//! The first run creates them; several processes may do so at once (test binaries each
//! starting `local dev` on a fresh clone). Each file is written whole to a temporary file and
//! then published with `hard_link`, which never replaces an existing file: one process wins,
//! the others delete their own key and read the winner's. A reader therefore never sees a
//! partial file, and every process ends up with the same key.
//!
//! The private key is the source of truth: `jwks.json` is derived from it. When `jwks.json`
//! exists it is what the gateway verifies with (more keys may be added to it by hand), but it
//! must contain the private key's `kid`, or tokens minted here would be refused.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

use super::AuthError;

/// File name of the private key (PEM, PKCS#8).
pub const PRIVATE_KEY_FILE: &str = "private-key.pem";
/// File name of the public JWKS.
pub const JWKS_FILE: &str = "jwks.json";

/// The dev signing key and the key set tokens are verified against.
pub struct DevKeys {
    /// `kid` of the signing key.
    pub kid: String,
    /// The signing key.
    pub signing: EncodingKey,
    /// The published JWKS (`jwks.json`), which contains `kid`.
    pub jwks: JwkSet,
}

impl DevKeys {
    /// The key pair of `dir`, created (with the directory) when absent.
    pub fn load_or_create(dir: &Path) -> Result<DevKeys, AuthError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| AuthError::io(dir, e))?;
        let key_path = dir.join(PRIVATE_KEY_FILE);
        let pem = match fs::read(&key_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let pem = generate_pem()?;
                if publish(&key_path, &pem, 0o600)? {
                    pem
                } else {
                    fs::read(&key_path).map_err(|e| AuthError::io(&key_path, e))?
                }
            }
            Err(e) => return Err(AuthError::io(&key_path, e)),
        };
        let signing = EncodingKey::from_rsa_pem(&pem).map_err(|e| corrupt(&key_path, e))?;
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::RS256)
            .map_err(|e| corrupt(&key_path, e))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| corrupt(&key_path, e))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let jwks = load_or_publish_jwks(&dir.join(JWKS_FILE), jwk)?;
        if jwks.find(&kid).is_none() {
            return Err(AuthError::Keys(format!(
                "{} has no key with kid {kid} (the kid of {}); delete {} to start over with a new key pair",
                dir.join(JWKS_FILE).display(),
                key_path.display(),
                dir.display()
            )));
        }
        Ok(DevKeys { kid, signing, jwks })
    }
}

/// `jwks.json` as published, publishing `{"keys": [jwk]}` first when it is absent.
fn load_or_publish_jwks(path: &Path, jwk: Jwk) -> Result<JwkSet, AuthError> {
    if !path.exists() {
        let set = JwkSet { keys: vec![jwk] };
        let mut text = serde_json::to_vec_pretty(&set).map_err(|e| corrupt(path, e))?;
        text.push(b'\n');
        publish(path, &text, 0o644)?;
    }
    let text = fs::read(path).map_err(|e| AuthError::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| corrupt(path, e))
}

/// A fresh RSA 2048 private key as a PKCS#8 PEM.
fn generate_pem() -> Result<Vec<u8>, AuthError> {
    let failed = || AuthError::Keys("generating an RSA 2048 key failed".into());
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| failed())?;
    let der = pair.as_der().map_err(|_| failed())?;
    let b64 = BASE64.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem.into_bytes())
}

/// Writes `bytes` to `path` unless it exists: `true` when this call created it, `false` when
/// another writer got there first (its file is left untouched). The file appears complete or
/// not at all.
fn publish(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, AuthError> {
    let temp = temp_path(path);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| fs::hard_link(&temp, path));
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(AuthError::io(path, e)),
    }
}

/// A name beside `path` that no other process uses.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ))
}

fn corrupt(path: &Path, e: impl std::fmt::Display) -> AuthError {
    AuthError::Keys(format!(
        "{} is not usable ({e}); delete it to start over with a new key pair",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "local-auth-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_first_run_creates_a_key_pair_the_next_runs_reuse() {
        let dir = scratch("reuse").join("nested");
        let started = std::time::Instant::now();
        let first = DevKeys::load_or_create(&dir).unwrap();
        eprintln!("key pair created in {:?}", started.elapsed());
        let again = DevKeys::load_or_create(&dir).unwrap();
        assert_eq!(first.kid, again.kid);
        let jwks: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join(JWKS_FILE)).unwrap()).unwrap();
        let key = &jwks["keys"][0];
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(
            (
                &key["kty"],
                &key["alg"],
                &key["use"],
                &key["kid"],
                &key["e"]
            ),
            (
                &"RSA".into(),
                &"RS256".into(),
                &"sig".into(),
                &first.kid.clone().into(),
                &"AQAB".into()
            )
        );
        // 2048 bits = 256 bytes = 342 base64url characters without padding.
        assert_eq!(key["n"].as_str().unwrap().len(), 342);
        let mode = |p: &Path| {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(p).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&dir.join(PRIVATE_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir), 0o700);
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn concurrent_first_runs_agree_on_one_key_pair() {
        let dir = scratch("race");
        let kids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6)
                .map(|_| s.spawn(|| DevKeys::load_or_create(&dir).unwrap().kid))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let jwks = DevKeys::load_or_create(&dir).unwrap().jwks;
        assert_eq!(jwks.keys.len(), 1);
        assert!(jwks.find(&kids[0]).is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_jwks_is_derived_again_and_a_foreign_one_is_refused() {
        let dir = scratch("jwks");
        let kid = DevKeys::load_or_create(&dir).unwrap().kid;
        fs::remove_file(dir.join(JWKS_FILE)).unwrap();
        assert_eq!(DevKeys::load_or_create(&dir).unwrap().kid, kid);
        assert!(dir.join(JWKS_FILE).exists());
        fs::write(dir.join(JWKS_FILE), r#"{"keys": []}"#).unwrap();
        let err = DevKeys::load_or_create(&dir).err().unwrap().to_string();
        assert!(err.contains(&format!("has no key with kid {kid}")), "{err}");
        fs::write(dir.join(PRIVATE_KEY_FILE), "not a key").unwrap();
        let err = DevKeys::load_or_create(&dir).err().unwrap().to_string();
        assert!(err.contains("private-key.pem is not usable"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
