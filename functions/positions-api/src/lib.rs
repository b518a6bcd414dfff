//! The positions HTTP API: an account's positions (quantity, average price, realized P&L), as
//! the positions worker keeps them from `TradeExecuted` events.

use aws_config::SdkConfig;
use lambda_http::{Body, Request, Response};
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    auth::Caller,
    domain::trades::Symbol,
    http::{Route, json, page_request},
    store::positions::{DynamoPositionStore, PositionStore},
};

/// The app of this function is its store.
pub type AwsApp = DynamoPositionStore;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars)
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: PositionStore>(app: &S, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: PositionStore>(app: &S, req: Request) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /accounts/{accountId}/positions" => {
            let account = Caller::own_account(&req)?;
            Ok(json(200, &app.list(&account, &page_request(&req)?).await?))
        }
        "GET /accounts/{accountId}/positions/{symbol}" => {
            let account = Caller::own_account(&req)?;
            let symbol: Symbol = route.param("symbol")?;
            match app.get(&account, &symbol).await? {
                Some(p) => Ok(json(200, &p)),
                None => Err(Error::NotFound(format!(
                    "account {account} has no position in {symbol}"
                ))),
            }
        }
        _ => Err(route.unknown()),
    }
}
