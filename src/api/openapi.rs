//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of the API, generated from the
//! handlers' annotations and their types (utoipa).

use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "btc-escrow",
        description = "Bitcoin-native collateral escrow: parties, offers, loans, co-signing, events, webhooks. All amounts are integers: `_sat` for bitcoin, `_minor` for fiat minor units, `_bps` for rates and ratios; heights are block heights; times are unix seconds. Errors are application/problem+json."
    ),
    paths(
        super::parties::create,
        super::parties::me,
        super::loans::offer,
        super::loans::list,
        super::loans::offers,
        super::loans::get,
        super::loans::accept,
        super::loans::repay,
        super::loans::psbt,
        super::loans::cosign,
        super::withdrawals::request,
        super::events::list,
        super::events::stream,
        super::webhooks::create,
        super::webhooks::deliveries,
        super::system::price,
        super::system::manual_price,
        super::system::health,
        super::metrics::metrics,
        document,
    ),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "system", responses((status = 200, description = "the OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn document() -> impl IntoResponse {
    axum::Json(ApiDoc::openapi())
}
