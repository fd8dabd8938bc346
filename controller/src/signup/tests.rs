//! The signup server's router in-process: files and headers, the status and NFT
//! routes on an empty store, bad ids, and the per-address rate limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;
use crate::store::StoreOptions;

fn page() -> PageConfig {
    PageConfig {
        chain_id: 31337,
        chain_id_hex: "0x7a69".into(),
        rpc_url: "http://127.0.0.1:8545".into(),
        subscriptions_contract: "0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
        nft_contract: "0xe7f1725e7734ce288f8367e1bb143e90bb3f0512".into(),
        server_public_key: "04aa".into(),
        public_secret: "blockhost-access".into(),
    }
}

fn app(dir: &tempfile::TempDir, limit: u32) -> (Router, Arc<Metrics>) {
    let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let st = SignupState::new(store, metrics.clone(), &page(), limit, 64);
    (router(st), metrics)
}

async fn get(
    app: &Router,
    path: &str,
    from: [u8; 4],
) -> (StatusCode, axum::http::HeaderMap, String) {
    let peer = SocketAddr::from((from, 40000));
    let resp = app
        .clone()
        .layer(MockConnectInfo(peer))
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn files_config_and_strict_headers() {
    let dir = tempfile::tempdir().unwrap();
    let (app, _) = app(&dir, 60);
    for (path, mime) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/vendor.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/config.json", "application/json"),
    ] {
        let (status, h, body) = get(&app, path, [127, 0, 0, 1]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            h[header::CONTENT_TYPE].to_str().unwrap().starts_with(mime),
            "{path}"
        );
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(
            csp.contains("connect-src 'self' http://127.0.0.1:8545;"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert!(!body.is_empty());
        if path == "/" {
            assert!(!body.contains("<script>"), "no inline scripts");
            assert!(!body.contains("https://"), "nothing from other origins");
        }
        if path == "/config.json" {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["chainIdHex"], "0x7a69");
            assert_eq!(v["publicSecret"], "blockhost-access");
        }
    }
    let (status, h, _) = get(&app, "/nope", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(h.contains_key(header::CONTENT_SECURITY_POLICY));
}

#[tokio::test]
async fn status_and_nft_routes_on_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let (app, metrics) = app(&dir, 60);
    let (status, _, body) = get(&app, "/api/v1/subscriptions/5", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["subscriptionId"], 5);
    assert_eq!(v["phase"], "Waiting");
    assert!(v.get("nftTokenId").is_none());
    let (status, _, _) = get(&app, "/api/v1/subscriptions/-1", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(
        &app,
        "/api/v1/subscriptions/99999999999999999999999",
        [127, 0, 0, 1],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(&app, "/api/v1/nfts/0", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = metrics.render_registry_only();
    assert!(
        text.contains("blockhost_signup_api_requests_total{result=\"ok\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn each_address_is_limited_separately_and_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (app, metrics) = app(&dir, 3);
    for _ in 0..3 {
        let (s, _, _) = get(&app, "/api/v1/subscriptions/1", [192, 0, 2, 1]).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, h, body) = get(&app, "/api/v1/subscriptions/1", [192, 0, 2, 1]).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(h[header::RETRY_AFTER], "60");
    let (s, _, _) = get(&app, "/api/v1/nfts/1", [192, 0, 2, 1]).await;
    assert_eq!(
        s,
        StatusCode::TOO_MANY_REQUESTS,
        "both API routes share the budget"
    );
    let (s, _, _) = get(&app, "/api/v1/subscriptions/1", [192, 0, 2, 2]).await;
    assert_eq!(s, StatusCode::OK, "another address has its own budget");
    let (s, _, _) = get(&app, "/", [192, 0, 2, 1]).await;
    assert_eq!(s, StatusCode::OK, "the page itself is not limited");
    assert!(
        metrics
            .render_registry_only()
            .contains("blockhost_signup_api_requests_total{result=\"rate_limited\"} 2")
    );
}

#[tokio::test]
async fn the_nft_route_finds_a_minted_subscription_by_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), StoreOptions::default()).unwrap();
    let sub: Subscription = serde_json::from_value(serde_json::json!({
        "apiVersion": "blockhost.io/v1alpha1", "kind": "Subscription",
        "metadata": {"name": "blockhost-007"},
        "spec": {"subscriptionId": 7, "planId": 3,
                 "subscriber": "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266",
                 "expiresAt": "2030-01-01T00:00:00Z", "vmName": "blockhost-007",
                 "blockNumber": 1, "transactionHash": "0xab"}
    }))
    .unwrap();
    let end = crate::store::chain::BlockRef {
        number: 1,
        hash: [1; 32],
    };
    store
        .chain_commit::<()>(
            "s",
            &[],
            end,
            64,
            |_, _| Ok(()),
            |tx| tx.put(&sub).map(|_| ()),
        )
        .unwrap();
    let st = SignupState::new(store.clone(), Arc::new(Metrics::new()), &page(), 60, 64);
    let app = router(st);
    let (status, _, _) = get(&app, "/api/v1/nfts/12", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not minted yet");
    store
        .update_status_as::<Subscription>(crate::store::Writer::Minter, "blockhost-007", |s| {
            s.status.nft_token_id = Some(12);
            true
        })
        .unwrap();
    let (status, _, body) = get(&app, "/api/v1/nfts/12", [127, 0, 0, 1]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["tokenId"].as_u64(), v["subscriptionId"].as_u64()),
        (Some(12), Some(7))
    );
}
