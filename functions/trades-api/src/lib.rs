//! The trades HTTP API: `POST /trades` accepts an order (`202`, PENDING at once) and
//! `GET /trades/{tradeId}` shows it PENDING, then EXECUTED or REJECTED with the reason.
//!
//! # Why commands go to an SQS FIFO queue, not EventBridge
//!
//! Trades of one account must execute in submission order (a SELL is judged against what the
//! earlier BUYs left): the API sends `SubmitTrade` straight to `TradesQueue.fifo`, grouped by
//! account (`shared::queue` says why the bus cannot do this). Its outcome events go on the bus
//! as usual.

use aws_config::SdkConfig;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    auth::Caller,
    command::{self, Accepted, CommandTransport},
    domain::{
        ids::AccountId,
        money::{Literal, Price, Quantity},
        trades::{Order, Side, SubmitTrade, Symbol, Trade, TradeStatus},
    },
    envelope::Payload,
    http::{Route, correlation_id, json, parse_exact},
    queue::SqsFifoQueue,
    store::{
        idempotency::{DynamoIdempotency, Idempotency},
        trades::{DynamoTradeStore, TradeStore},
    },
};
use uuid::Uuid;

mod intake;

pub use intake::ProvisionalTrade;

/// The commands this API sends straight to its worker's FIFO queue (not through the bus, so
/// no rule routes them): checked against `template.yaml` with the worker's `HANDLES`.
pub const QUEUED_COMMANDS: &[&str] = &["SubmitTrade"];

pub struct App<S, Q, I> {
    pub store: S,
    /// Where trade commands go: the trades FIFO queue, one message group per account.
    pub queue: Q,
    pub idempotency: I,
}

pub type AwsApp = App<DynamoTradeStore, SqsFifoQueue, DynamoIdempotency>;

/// Builds the function from the template's environment: `TABLE_NAME`, `TRADES_QUEUE_URL`.
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let queue = SqsFifoQueue::new(aws_sdk_sqs::Client::new(sdk), vars.var("TRADES_QUEUE_URL")?);
    let (store, idempotency) = shared::store::open_two(sdk, vars)?;
    Ok(App {
        store,
        queue,
        idempotency,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TradeBody {
    account_id: AccountId,
    symbol: Symbol,
    side: Side,
    quantity: Literal<Quantity>,
    price: Literal<Price>,
}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: TradeStore, Q: CommandTransport, I: Idempotency>(
    app: &App<S, Q, I>,
    req: Request,
) -> Response<Body> {
    shared::http::serve(req, |req| app.route(req)).await
}

/// The routes, one handler method each.
impl<S: TradeStore, Q: CommandTransport, I: Idempotency> App<S, Q, I> {
    async fn route(&self, req: Request) -> Result<Response<Body>, Error> {
        let route = Route::of(&req);
        match route.key() {
            "POST /trades" => self.submit(&req).await,
            "GET /trades/{tradeId}" => {
                self.get_trade(&Caller::of(&req)?, route.lookup("tradeId", "trade")?)
                    .await
            }
            _ => Err(route.unknown()),
        }
    }

    /// Another account's trade answers `404` like a missing one: trade ids must not reveal
    /// whether someone else traded.
    async fn get_trade(&self, caller: &Caller, trade_id: Uuid) -> Result<Response<Body>, Error> {
        let not_found = || Error::NotFound(format!("no trade {trade_id}"));
        match self.store.get(trade_id).await? {
            Some(trade) if caller.owns(&trade.order.account_id) => Ok(json(200, &trade)),
            _ => Err(not_found()),
        }
    }

    /// Accepts an order: the trade is PENDING at once, its command goes to the trades FIFO
    /// queue (ordered per account). Only the caller's own accounts can trade (`403` otherwise).
    /// With an `Idempotency-Key`, the trade and command ids derive from the key and the order,
    /// so a retry after an ambiguous failure (the queue took the command but the answer was
    /// lost) names the same trade and can never execute a second one.
    async fn submit(&self, req: &Request) -> Result<Response<Body>, Error> {
        let caller = Caller::of(req)?;
        let body: TradeBody = parse_exact(req)?;
        caller.require_account(&body.account_id)?;
        let (quantity, price) = (body.quantity.0, body.price.0);
        command::idempotency_key(req)?;
        // Two requests are "the same" when they describe the same order: `10` and `"10.0"` are.
        let order = json!({
            "accountId": body.account_id, "symbol": body.symbol, "side": body.side,
            "quantity": quantity, "price": price,
        });
        command::accept(&self.idempotency, &self.queue, req, &order, |ids| {
            let cmd = SubmitTrade {
                order: Order {
                    trade_id: ids.created,
                    account_id: body.account_id,
                    symbol: body.symbol,
                    side: body.side,
                    quantity,
                    price,
                },
                submitted_at: ids.at,
            };
            let trade_id = cmd.order.trade_id;
            let provisional = ProvisionalTrade {
                store: &self.store,
                trade: Trade::pending(&cmd),
            };
            Accepted {
                location: format!("/trades/{trade_id}"),
                body: json!({ "tradeId": trade_id, "status": TradeStatus::Pending }),
                command: ids.envelope(correlation_id(req), Payload::SubmitTrade(cmd)),
                provisional,
            }
        })
        .await
    }
}
