//! The conversations HTTP API: queries read the conversations table; commands are validated,
//! checked against what the table knows, and handed to EventBridge (`202`).
//!
//! A new conversation or message is visible at once: the API writes it (PENDING, ACCEPTED)
//! before publishing its command, so `GET` on the `Location` never answers `404` for something
//! just accepted, and a message can be refused at the API when its conversation is unknown or
//! closed. The write and the publish cannot share a transaction, so:
//! - the record is written only after the `Idempotency-Key` claim (a replay writes nothing);
//! - if publishing fails, the record is deleted (compensation) and the caller gets `503`;
//! - if that delete fails too, the record expires (`expiresAt`, DynamoDB TTL): its id was never
//!   returned, so nobody waits for it;
//! - the worker applies a command whose record is missing (a publish reported as failed may
//!   have gone through) by creating it from the command, which carries every field.

use chrono::Utc;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::{
    Error,
    bus::{EventBridgeBus, EventBus},
    command::{self, Accept, Provisional},
    config,
    domain::{
        agents::Skills,
        conversations::{
            Channel, CloseConversation, Conversation, ConversationStatus, Message as ChatMessage,
            MessageStatus, MessageText, Receipt, RecordReceipt, SendMessage, Sender,
            StartConversation,
        },
        ids::{ConversationId, CustomerId, MessageId},
    },
    events::{Envelope, Message},
    http::{Route, correlation_id, json, limit, parse_command, query},
    store::{
        Write,
        conversations::{ConversationStore, DynamoConversationStore},
        idempotency::{DynamoIdempotency, Idempotency},
    },
};

pub struct Config {
    pub table_name: String,
    pub event_bus_name: String,
}

impl Config {
    pub fn from_env() -> Result<Self, config::MissingVar> {
        Ok(Config {
            table_name: config::var("TABLE_NAME")?,
            event_bus_name: config::var("EVENT_BUS_NAME")?,
        })
    }
}

pub struct App<S, B, I> {
    pub store: S,
    pub bus: B,
    pub idempotency: I,
}

pub type AwsApp = App<DynamoConversationStore, EventBridgeBus, DynamoIdempotency>;

impl AwsApp {
    pub fn new(sdk: &aws_config::SdkConfig, config: Config) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        App {
            store: DynamoConversationStore::new(dynamodb.clone(), config.table_name.clone()),
            bus: EventBridgeBus::new(aws_sdk_eventbridge::Client::new(sdk), config.event_bus_name),
            idempotency: DynamoIdempotency::new(dynamodb, config.table_name),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct StartBody {
    customer_id: CustomerId,
    channel: Channel,
    #[serde(default)]
    skills: Skills,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MessageBody {
    sender: Sender,
    text: MessageText,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ReceiptBody {
    status: Receipt,
}

/// Close takes no fields; a body, when sent, must be a JSON object without any.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloseBody {}

/// Handles one request; every error becomes a problem+json response here.
pub async fn handle<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: Request,
) -> Response<Body> {
    shared::http::serve(req, |req| route(app, req)).await
}

async fn route<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: Request,
) -> Result<Response<Body>, Error> {
    let route = Route::of(&req);
    let id = "conversationId";
    match route.key() {
        "POST /conversations" => start(app, &req).await,
        "GET /conversations/{conversationId}" => get(app, route.lookup(id, "conversation")?).await,
        "POST /conversations/{conversationId}/close" => close(app, &req, route.param(id)?).await,
        "POST /conversations/{conversationId}/messages" => send(app, &req, route.param(id)?).await,
        "GET /conversations/{conversationId}/messages" => {
            list(app, &req, route.lookup(id, "conversation")?).await
        }
        "GET /conversations/{conversationId}/messages/{messageId}" => {
            let message = route.lookup("messageId", "message")?;
            get_message(app, route.lookup(id, "conversation")?, message).await
        }
        "POST /conversations/{conversationId}/messages/{messageId}/receipts" => {
            let message = route.param("messageId")?;
            receipt(app, &req, route.param(id)?, message).await
        }
        _ => Err(route.unknown()),
    }
}

async fn conversation<S: ConversationStore>(
    store: &S,
    id: &ConversationId,
) -> Result<Conversation, Error> {
    store
        .get(id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no conversation {id}")))
}

async fn get<S: ConversationStore, B, I>(
    app: &App<S, B, I>,
    id: ConversationId,
) -> Result<Response<Body>, Error> {
    Ok(json(200, &conversation(&app.store, &id).await?))
}

async fn list<S: ConversationStore, B, I>(
    app: &App<S, B, I>,
    req: &Request,
    id: ConversationId,
) -> Result<Response<Body>, Error> {
    let limit = limit(req)?;
    let cursor = query::<String>(req, "cursor")?;
    conversation(&app.store, &id).await?;
    let page = app.store.messages(&id, limit, cursor.as_deref()).await?;
    Ok(json(200, &page))
}

async fn get_message<S: ConversationStore, B, I>(
    app: &App<S, B, I>,
    id: ConversationId,
    message: MessageId,
) -> Result<Response<Body>, Error> {
    match app.store.message(&id, &message).await? {
        Some(m) => Ok(json(200, &m)),
        None => Err(Error::NotFound(format!("no message {message} in {id}"))),
    }
}

/// The PENDING conversation or ACCEPTED message written before its command is published.
enum Record<'a, S> {
    Conversation(&'a S, Conversation),
    Message(&'a S, ChatMessage),
}

impl<S: ConversationStore> Provisional for Record<'_, S> {
    async fn write(&self) -> Result<(), Error> {
        let write = match self {
            Record::Conversation(store, c) => store.save(None, c, None).await?,
            Record::Message(store, m) => store.save_message(None, m, None).await?,
        };
        match write {
            Write::Done => Ok(()),
            // Ids are fresh UUIDs: a collision is a bug, not a user error.
            _ => Err(Error::Internal("generated id already exists".into())),
        }
    }

    async fn undo(&self) -> Result<(), Error> {
        match self {
            Record::Conversation(store, c) => store.discard(&c.conversation_id, None).await,
            Record::Message(store, m) => {
                store.discard(&m.conversation_id, Some(&m.message_id)).await
            }
        }
    }
}

async fn start<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
) -> Result<Response<Body>, Error> {
    let (request, body): (Value, StartBody) = parse_command(req)?;
    let cmd = StartConversation {
        conversation_id: new_id(uuid::Uuid::new_v4()),
        customer_id: body.customer_id,
        channel: body.channel,
        skills: body.skills,
        created_at: Utc::now(),
    };
    let id = cmd.conversation_id.clone();
    let scope = format!("customer:{}", cmd.customer_id);
    let record = Record::Conversation(&app.store, Conversation::start(&cmd));
    let envelope = Envelope::new(correlation_id(req), Message::StartConversation(cmd));
    let response = json!({ "conversationId": id, "commandId": envelope.id, "status": ConversationStatus::Pending });
    let accept = Accept {
        scope: &scope,
        request: &request,
        location: format!("/conversations/{id}"),
        body: response,
        envelope,
    };
    command::accept_with(&app.idempotency, &app.bus, req, accept, &record).await
}

fn new_id<T: std::str::FromStr>(uuid: uuid::Uuid) -> T
where
    T::Err: std::fmt::Debug,
{
    uuid.to_string()
        .parse()
        .expect("a UUID is a valid id: 36 characters of hex digits and '-'")
}

async fn send<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
    id: ConversationId,
) -> Result<Response<Body>, Error> {
    let (request, body): (Value, MessageBody) = parse_command(req)?;
    command::idempotency_key(req)?;
    if conversation(&app.store, &id).await?.status == ConversationStatus::Closed {
        return Err(Error::Conflict(format!("conversation {id} is closed")));
    }
    let cmd = SendMessage {
        conversation_id: id.clone(),
        // v7: time-ordered, so the table lists a conversation's messages in acceptance order.
        message_id: new_id(uuid::Uuid::now_v7()),
        sender: body.sender,
        text: body.text,
        accepted_at: Utc::now(),
    };
    let message_id = cmd.message_id.clone();
    let record = Record::Message(&app.store, ChatMessage::accept(&cmd));
    let envelope = Envelope::new(correlation_id(req), Message::SendMessage(cmd));
    let response = json!({
        "conversationId": id, "messageId": message_id, "commandId": envelope.id,
        "status": MessageStatus::Accepted,
    });
    let accept = Accept {
        scope: &format!("conversation:{id}:messages"),
        request: &request,
        location: format!("/conversations/{id}/messages/{message_id}"),
        body: response,
        envelope,
    };
    command::accept_with(&app.idempotency, &app.bus, req, accept, &record).await
}

async fn receipt<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
    id: ConversationId,
    message_id: MessageId,
) -> Result<Response<Body>, Error> {
    let (request, body): (Value, ReceiptBody) = parse_command(req)?;
    command::idempotency_key(req)?;
    let Some(message) = app.store.message(&id, &message_id).await? else {
        return Err(Error::NotFound(format!("no message {message_id} in {id}")));
    };
    if message.status == MessageStatus::Rejected {
        return Err(Error::Conflict(format!(
            "message {message_id} was rejected"
        )));
    }
    let envelope = Envelope::new(
        correlation_id(req),
        Message::RecordReceipt(RecordReceipt {
            conversation_id: id.clone(),
            message_id: message_id.clone(),
            status: body.status,
        }),
    );
    let response =
        json!({ "conversationId": id, "messageId": message_id, "commandId": envelope.id });
    command::accept(
        &app.idempotency,
        &app.bus,
        req,
        Accept {
            scope: &format!("message:{id}:{message_id}"),
            request: &request,
            location: format!("/conversations/{id}/messages/{message_id}"),
            body: response,
            envelope,
        },
    )
    .await
}

/// Closing an already closed conversation is accepted too (and changes nothing).
async fn close<S: ConversationStore, B: EventBus, I: Idempotency>(
    app: &App<S, B, I>,
    req: &Request,
    id: ConversationId,
) -> Result<Response<Body>, Error> {
    let request = if req.body().as_ref().iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_command::<CloseBody>(req)?.0
    };
    command::idempotency_key(req)?;
    conversation(&app.store, &id).await?;
    let envelope = Envelope::new(
        correlation_id(req),
        Message::CloseConversation(CloseConversation {
            conversation_id: id.clone(),
        }),
    );
    let response = json!({ "conversationId": id, "commandId": envelope.id });
    command::accept(
        &app.idempotency,
        &app.bus,
        req,
        Accept {
            scope: &format!("conversation:{id}:close"),
            request: &request,
            location: format!("/conversations/{id}"),
            body: response,
            envelope,
        },
    )
    .await
}
