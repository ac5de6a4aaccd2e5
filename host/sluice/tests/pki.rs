//! A certificate authority for the TLS suites, its files in a folder of its own.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate for `name` (in the SAN and, if `common`, as the Common
/// Name: OpenSSL takes a leaf named like its issuer for self-signed, so
/// every certificate here is named).
fn named(name: &str, common: bool) -> CertificateParams {
    let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.distinguished_name = DistinguishedName::new();
    if common {
        params.distinguished_name.push(DnType::CommonName, name);
    }
    params
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = named("sluice test CA", true);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        pki.write("ca.pem", pki.ca.pem());
        pki
    }

    fn write(&self, name: &str, text: String) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// The CA's certificate file.
    pub fn ca(&self) -> String {
        self.dir.path().join("ca.pem").to_str().unwrap().to_owned()
    }

    /// A certificate for `name` and its key, as files.
    pub fn issue(&self, name: &str, common: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = named(name, common).signed_by(&key, &self.ca).unwrap();
        (
            self.write(&format!("{name}.pem"), cert.pem()),
            self.write(&format!("{name}.key"), key.serialize_pem()),
        )
    }

    /// A file in its folder.
    pub fn file(&self, name: &str, text: &str) -> String {
        self.write(name, text.to_owned())
    }
}
