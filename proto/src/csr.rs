//! A fresh private key and a certificate signing request for it, made in memory where the key
//! will live (an agent's host, an operator's workstation): only the CSR is sent, the key never
//! leaves. The fleet CA takes nothing from the CSR but its public key; the name in it is a
//! courtesy for anyone reading the request.

use rcgen::{CertificateParams, DnType, KeyPair};

/// A private key (PEM) and a CSR for it (DER), both still in memory.
pub struct KeyAndCsr {
    /// The private key, PEM. Whoever keeps it writes it 0600 (`files::write_private`).
    pub key_pem: String,
    /// PKCS#10 request, DER, as the enrollment and operator requests carry it.
    pub csr_der: Vec<u8>,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a private key, not even in a debug log.
        f.debug_struct("KeyAndCsr").finish_non_exhaustive()
    }
}

/// Why a key or CSR could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot make a private key and certificate signing request: {0}")]
pub struct CsrError(String);

/// Makes a fresh key (ECDSA P-256) and a CSR for it with `common_name` as its subject (empty:
/// no subject).
pub fn key_and_csr(common_name: &str) -> Result<KeyAndCsr, CsrError> {
    let key = KeyPair::generate().map_err(|e| CsrError(e.to_string()))?;
    let mut params = CertificateParams::default();
    if !common_name.is_empty() {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CsrError(e.to_string()))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_makes_a_new_key_and_a_request_for_it() {
        let one = key_and_csr("alice").unwrap();
        let two = key_and_csr("").unwrap();
        assert_ne!(one.key_pem, two.key_pem);
        assert!(one.key_pem.contains("PRIVATE KEY"));
        assert!(!one.csr_der.is_empty());
        assert!(!format!("{one:?}").contains("PRIVATE"));
    }
}
