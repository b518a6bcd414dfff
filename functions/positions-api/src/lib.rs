//! The positions HTTP API: an account's positions (quantity, average price, realized P&L), as
//! the positions worker keeps them from `TradeExecuted` events.

use lambda_http::{Body, Request, Response};
use shared::{
    Error,
    auth::Caller,
    config,
    domain::trades::Symbol,
    http::{Route, json, limit, query},
    store::positions::{DynamoPositionStore, PositionStore},
};

pub struct Config {
    pub table_name: String,
}

impl Config {
    pub fn from_vars(vars: &config::Vars) -> Result<Self, config::MissingVar> {
        Ok(Config {
            table_name: vars.var("TABLE_NAME")?,
        })
    }
}

pub struct App<S> {
    pub store: S,
}

pub type AwsApp = App<DynamoPositionStore>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            store: DynamoPositionStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table_name),
        }
    }
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: PositionStore>(app: &App<S>, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: PositionStore>(app: &App<S>, req: Request) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /accounts/{accountId}/positions" => {
            let account = Caller::own_account(&req)?;
            let limit = limit(&req)?;
            let cursor = query::<String>(&req, "cursor")?;
            Ok(json(
                200,
                &app.store.list(&account, limit, cursor.as_deref()).await?,
            ))
        }
        "GET /accounts/{accountId}/positions/{symbol}" => {
            let account = Caller::own_account(&req)?;
            let symbol: Symbol = route.param("symbol")?;
            match app.store.get(&account, &symbol).await? {
                Some(p) => Ok(json(200, &p)),
                None => Err(Error::NotFound(format!(
                    "account {account} has no position in {symbol}"
                ))),
            }
        }
        _ => Err(route.unknown()),
    }
}
