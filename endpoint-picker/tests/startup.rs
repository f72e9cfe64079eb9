//! Startup options over real sockets: TLS on the ext_proc port, and `--config` validation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;

use std::process::Command;

use kvpick_epp::{Server, Settings};

#[tokio::test]
async fn a_picker_config_must_agree_with_the_endpoints_file_on_block_size() {
    use kvpick_scheduler::config::EndpointPickerConfig;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("endpoints.yaml");
    std::fs::write(&file, "model: m\nblockSize: 16\nendpoints: []\n").unwrap();
    let config_file = dir.path().join("picker.yaml");
    std::fs::write(
        &config_file,
        EndpointPickerConfig::DEFAULT_YAML.replace("blockSize: 16", "blockSize: 32"),
    )
    .unwrap();

    let cli = kvpick_epp::config::parse_ignoring_environment([
        "kvpick-epp",
        "--config",
        config_file.to_str().unwrap(),
        "--endpoints-file",
        file.to_str().unwrap(),
    ])
    .unwrap();
    let mut settings = Settings::from_cli(&cli).unwrap();
    (settings.grpc, settings.health, settings.metrics) =
        (Settings::loopback().grpc, Settings::loopback().health, None);
    let err = Server::bind(settings).await.unwrap_err().to_string();
    assert!(
        err.contains("blockSize 16 differs from --config index.blockSize 32"),
        "{err}"
    );

    std::fs::write(&config_file, "apiVersion: nope\n").unwrap();
    let cli = kvpick_epp::config::parse_ignoring_environment([
        "kvpick-epp",
        "--config",
        config_file.to_str().unwrap(),
    ])
    .unwrap();
    let err = Settings::from_cli(&cli).unwrap_err().to_string();
    assert!(
        err.contains("picker.yaml") && err.contains("apiVersion"),
        "{err}"
    );
}

/// Runs `openssl` (the test fails loudly if it is missing) to make a CA and a leaf for 127.0.0.1.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("`openssl` is needed to make test certificates: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=kvpick test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_proc_over_tls() {
    use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut settings = Settings::loopback();
    settings.tls = Some(kvpick_epp::server::tls::TlsSource::Files {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        reload: std::time::Duration::from_secs(10),
    });
    let p = common::Picker::start(settings, &["127.0.0.1:42001"]).await;
    let ca =
        tonic::transport::Certificate::from_pem(std::fs::read(dir.path().join("ca.pem")).unwrap());
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(ca)
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", p.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut s = common::Stream::open(ExternalProcessorClient::new(channel)).await;
    s.send(common::request_headers(
        common::duplex(),
        "GET",
        &[],
        true,
        None,
    ))
    .await;
    let h = s.recv().await;
    assert_eq!(
        common::set_header(common::mutation(&h), "x-gateway-destination-endpoint"),
        Some("127.0.0.1:42001")
    );
    // Plaintext is refused on a TLS port.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", p.grpc))
        .unwrap()
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = ExternalProcessorClient::new(ch);
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        assert!(
            c.process(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .is_err()
        );
    }
    drop(s);
    p.stop().await;
}
