//! TokenReview bodies as the edge parses them: any bytes parse or fail without panicking,
//! and what is rendered for a parsed review (and for a failure) is valid JSON that never
//! echoes the token.
#![no_main]

use authd_edge::review::{parse, render, status_body};
use authd_proto::v1::{AuthenticateResponse, User};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(review) => {
            let yes = AuthenticateResponse {
                authenticated: true,
                user: Some(User {
                    username: "alice".into(),
                    ..Default::default()
                }),
                audiences: review.audiences.clone(),
                ..Default::default()
            };
            for verdict in [yes, AuthenticateResponse::default()] {
                let out = render(&review, &verdict);
                let v: serde_json::Value =
                    serde_json::from_slice(&out).expect("rendered review is JSON");
                assert!(
                    v["spec"].get("token").is_none(),
                    "the token is never echoed"
                );
            }
        }
        Err(e) => {
            let body = status_body(400, "BadRequest", &e.to_string());
            serde_json::from_slice::<serde_json::Value>(&body).expect("status body is JSON");
        }
    }
});
