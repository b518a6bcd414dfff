//! The ledger HTTP API: an account's journal (paginated, in trade order) and its balances.

use aws_config::SdkConfig;
use lambda_http::{Body, Request, Response};
use serde_json::json as value;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    auth::Caller,
    domain::{ids::AccountId, money::exact_add},
    http::{Route, json, page_request},
    store::ledger::{DynamoLedgerStore, LedgerStore},
};

/// The app of this function is its store.
pub type AwsApp = DynamoLedgerStore;

/// Builds the function from the template's environment: `TABLE_NAME`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    shared::store::open(sdk, vars)
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: LedgerStore>(app: &S, req: Request) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: LedgerStore>(app: &S, req: Request) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    match route.key() {
        "GET /accounts/{accountId}/ledger" => {
            let account = Caller::own_account(&req)?;
            let page = app.entries(&account, &page_request(&req)?).await?;
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
async fn balance<S: LedgerStore>(app: &S, account: AccountId) -> Result<Response<Body>, Error> {
    let balances = app.balances(&account).await?;
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
