//! A throwaway CA for tests: signs agents' requests and the certificate of a stand-in
//! aggregator.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use time::OffsetDateTime;

/// A CA that lives as long as the test.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Outpost test CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.as_ref().pem()
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.issuer.as_ref().der().clone()
    }

    /// Signs `csr_der` as it asks, valid from `from` for `seconds`.
    pub(crate) fn sign(&self, csr_der: &[u8], from: OffsetDateTime, seconds: i64) -> String {
        let mut csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .unwrap();
        csr.params.not_before = from;
        csr.params.not_after = from + time::Duration::seconds(seconds);
        csr.signed_by(&self.issuer).unwrap().pem()
    }

    /// A server certificate for `name` (a DNS name or an IP address) and its key.
    pub(crate) fn server(&self, name: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.der().clone(), key)
    }
}
