//! The ledger HTTP API: an account's journal (paginated, in trade order) and its balances.

use lambda_http::{Body, Request, Response};
use serde_json::json as value;
use shared::{
    Error,
    auth::Caller,
    config,
    domain::{ids::AccountId, money::exact_add},
    http::{Route, json, limit, query},
    store::ledger::{DynamoLedgerStore, LedgerStore},
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

pub type AwsApp = App<DynamoLedgerStore>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        App {
            store: DynamoLedgerStore::new(aws_sdk_dynamodb::Client::new(sdk), config.table_name),
        }
    }
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: LedgerStore>(app: &App<S>, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: LedgerStore>(app: &App<S>, req: Request) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /accounts/{accountId}/ledger" => {
            let account = Caller::own_account(&req)?;
            let limit = limit(&req)?;
            let cursor = query::<String>(&req, "cursor")?;
            let page = app
                .store
                .entries(&account, limit, cursor.as_deref())
                .await?;
            Ok(json(
                200,
                &value!({ "entries": page.items, "nextCursor": page.next_cursor }),
            ))
        }
        "GET /accounts/{accountId}/balance" => balance(app, Caller::own_account(&req)?).await,
        _ => Err(route.unknown()),
    }
}

/// Each ledger account's balance and their total, which double entry keeps at zero.
async fn balance<S: LedgerStore>(
    app: &App<S>,
    account: AccountId,
) -> Result<Response<Body>, Error> {
    let balances = app.store.balances(&account).await?;
    let total = balances
        .values()
        .try_fold(Default::default(), |sum, b| exact_add(sum, b.get()))
        .map_err(|e| Error::Internal(e.to_string()))?;
    Ok(json(
        200,
        &value!({
            "accountId": account,
            "balances": balances,
            "total": shared::domain::money::Amount::new(total),
        }),
    ))
}
