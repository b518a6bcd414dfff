//! The conversations HTTP API: queries read the conversations table; commands are validated,
//! checked against what the table knows, and handed to EventBridge (`202`).
//!
//! A new conversation or message is visible at once: the API writes it (PENDING, ACCEPTED)
//! before handing its command off, so `GET` on the `Location` never answers `404` for
//! something just accepted, and a message can be refused at the API when its conversation is
//! unknown or closed. How that record and the command stay consistent when a write fails:
//! `shared::command::Provisional`.

use aws_config::SdkConfig;
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared::config::{MissingVar, Vars};
use shared::{
    Error,
    bus::EventBridgeBus,
    command::{
        self, Accepted, Checked, CommandTransport, Compensated, Guarded, NothingProvisional,
        Precondition, Provisional, Provisioned,
    },
    domain::{
        agents::Skills,
        conversations::{
            Channel, ChatMessage, CloseConversation, Conversation, ConversationStatus,
            MessageStatus, MessageText, Receipt, RecordReceipt, SendMessage, Sender,
            StartConversation,
        },
        ids::{ConversationId, CustomerId, MessageId},
    },
    envelope::Payload,
    http::{Route, correlation_id, json, page_request, parse_command},
    store::{
        Write,
        conversations::{ConversationStore, DynamoConversationStore, Versioned},
        idempotency::{DynamoIdempotency, Idempotency},
    },
};

pub struct App<S, B, I> {
    pub store: S,
    /// Where commands go: the event bus, whose rules route them to the worker's queue.
    pub commands: B,
    pub idempotency: I,
}

pub type AwsApp = App<DynamoConversationStore, EventBridgeBus, DynamoIdempotency>;

/// Builds the function from the template's environment: `TABLE_NAME`, `EVENT_BUS_NAME` (commands go to the bus).
pub fn init(sdk: &SdkConfig, vars: &Vars) -> Result<AwsApp, MissingVar> {
    let commands = EventBridgeBus::open(sdk, vars)?;
    let (store, idempotency) = shared::store::open_two(sdk, vars)?;
    Ok(App {
        store,
        commands,
        idempotency,
    })
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
pub async fn handle<S: ConversationStore, B: CommandTransport, I: Idempotency>(
    app: &App<S, B, I>,
    req: Request,
) -> Response<Body> {
    shared::http::serve(req, |req| app.route(req)).await
}

/// The PENDING conversation or ACCEPTED message written before its command is published.
enum ProvisionalItem<'a, S> {
    Conversation(&'a S, Conversation),
    ChatMessage(&'a S, ChatMessage),
}

impl<S: ConversationStore> Provisional for ProvisionalItem<'_, S> {
    async fn write(&self) -> Result<Provisioned, Error> {
        let write = match self {
            ProvisionalItem::Conversation(store, c) => {
                store.save(None, Versioned::Conversation(c), None).await?
            }
            ProvisionalItem::ChatMessage(store, m) => {
                store.save(None, Versioned::Message(m), None).await?
            }
        };
        if write == Write::Done {
            return Ok(Provisioned::Written);
        }
        // There already: an earlier attempt of this request wrote it (the ids are derived from
        // its Idempotency-Key). Still provisional, its command may not have been sent.
        let provisional = match self {
            ProvisionalItem::Conversation(store, c) => store
                .get(&c.conversation_id)
                .await?
                .is_none_or(|c| c.version == 0 && c.status == ConversationStatus::Pending),
            ProvisionalItem::ChatMessage(store, m) => store
                .message(&m.conversation_id, &m.message_id)
                .await?
                .is_none_or(|m| m.version == 0 && m.status == MessageStatus::Accepted),
        };
        Ok(if provisional {
            Provisioned::Written
        } else {
            Provisioned::Applied
        })
    }

    async fn undo(&self) -> Result<Compensated, Error> {
        let removed = match self {
            ProvisionalItem::Conversation(store, c) => {
                store.discard(&c.conversation_id, None).await?
            }
            ProvisionalItem::ChatMessage(store, m) => {
                store
                    .discard(&m.conversation_id, Some(&m.message_id))
                    .await?
            }
        };
        Ok(if removed {
            Compensated::Undone
        } else {
            Compensated::Applied
        })
    }
}

/// A message is accepted only into an open conversation ([`Precondition`]: checked after the
/// `Idempotency-Key` claim). The message, under the request's derived id, already there means
/// an earlier attempt of this request was accepted while the conversation was open: the
/// request is that attempt's, accepted again whatever the conversation's status now (its
/// worker rejects it if the close came first).
struct Open<'a, S> {
    store: &'a S,
    conversation_id: ConversationId,
    message_id: MessageId,
}

impl<S: ConversationStore> Precondition for Open<'_, S> {
    async fn check(&self) -> Result<Checked, Error> {
        let id = &self.conversation_id;
        if self.store.message(id, &self.message_id).await?.is_some() {
            return Ok(Checked::Holds);
        }
        match self.store.get(id).await? {
            Some(c) if c.status == ConversationStatus::Closed => {
                Err(Error::Conflict(format!("conversation {id} is closed")))
            }
            _ => Ok(Checked::Holds),
        }
    }
}

/// A receipt is refused for a rejected message ([`Precondition`]: checked after the
/// `Idempotency-Key` claim), unless this request's own receipt was applied already (its
/// answer lost): then it is accepted again.
struct NotRejected<'a, S> {
    store: &'a S,
    conversation_id: ConversationId,
    message_id: MessageId,
    command: uuid::Uuid,
}

impl<S: ConversationStore> Precondition for NotRejected<'_, S> {
    async fn check(&self) -> Result<Checked, Error> {
        if self.store.processed(self.command).await?.is_some() {
            return Ok(Checked::Applied);
        }
        let message = self
            .store
            .message(&self.conversation_id, &self.message_id)
            .await?;
        if message.is_some_and(|m| m.status == MessageStatus::Rejected) {
            return Err(Error::Conflict(format!(
                "message {} was rejected",
                self.message_id
            )));
        }
        Ok(Checked::Holds)
    }
}

/// The routes, one handler method each.
impl<S: ConversationStore, B: CommandTransport, I: Idempotency> App<S, B, I> {
    async fn route(&self, req: Request) -> Result<Response<Body>, Error> {
        let route = Route::of(&req);
        let id = "conversationId";
        match route.key() {
            "POST /conversations" => self.start(&req).await,
            "GET /conversations/{conversationId}" => {
                self.get(route.lookup(id, "conversation")?).await
            }
            "POST /conversations/{conversationId}/close" => {
                self.close(&req, route.param(id)?).await
            }
            "POST /conversations/{conversationId}/messages" => {
                self.send(&req, route.param(id)?).await
            }
            "GET /conversations/{conversationId}/messages" => {
                self.list(&req, route.lookup(id, "conversation")?).await
            }
            "GET /conversations/{conversationId}/messages/{messageId}" => {
                let message = route.lookup("messageId", "message")?;
                self.get_message(route.lookup(id, "conversation")?, message)
                    .await
            }
            "POST /conversations/{conversationId}/messages/{messageId}/receipts" => {
                let message = route.param("messageId")?;
                self.receipt(&req, route.param(id)?, message).await
            }
            _ => Err(route.unknown()),
        }
    }

    /// The conversation, or `404`.
    async fn conversation(&self, id: &ConversationId) -> Result<Conversation, Error> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no conversation {id}")))
    }

    async fn get(&self, id: ConversationId) -> Result<Response<Body>, Error> {
        Ok(json(200, &self.conversation(&id).await?))
    }

    async fn list(&self, req: &Request, id: ConversationId) -> Result<Response<Body>, Error> {
        let page_request = page_request(req)?;
        self.conversation(&id).await?;
        let page = self.store.messages(&id, &page_request).await?;
        Ok(json(200, &page))
    }

    async fn get_message(
        &self,
        id: ConversationId,
        message: MessageId,
    ) -> Result<Response<Body>, Error> {
        match self.store.message(&id, &message).await? {
            Some(m) => Ok(json(200, &m)),
            None => Err(Error::NotFound(format!("no message {message} in {id}"))),
        }
    }

    async fn start(&self, req: &Request) -> Result<Response<Body>, Error> {
        let (request, body): (Value, StartBody) = parse_command(req)?;
        command::accept(&self.idempotency, &self.commands, req, &request, |ids| {
            let cmd = StartConversation {
                conversation_id: ids.created_id(),
                customer_id: body.customer_id,
                channel: body.channel,
                skills: body.skills,
                created_at: ids.at,
            };
            let id = cmd.conversation_id.clone();
            let provisional = ProvisionalItem::Conversation(&self.store, Conversation::start(&cmd));
            Accepted {
                location: format!("/conversations/{id}"),
                body: json!({
                    "conversationId": id, "commandId": ids.command,
                    "status": ConversationStatus::Pending,
                }),
                command: ids.envelope(correlation_id(req), Payload::StartConversation(cmd)),
                provisional,
            }
        })
        .await
    }

    async fn send(&self, req: &Request, id: ConversationId) -> Result<Response<Body>, Error> {
        let (request, body): (Value, MessageBody) = parse_command(req)?;
        command::idempotency_key(req)?;
        self.conversation(&id).await?;
        command::accept(&self.idempotency, &self.commands, req, &request, |ids| {
            let cmd = SendMessage {
                conversation_id: id.clone(),
                // UUIDv7: time-ordered, so the table lists a conversation's messages in
                // acceptance order.
                message_id: ids.created_id(),
                sender: body.sender,
                text: body.text,
                accepted_at: ids.at,
            };
            let message_id = cmd.message_id.clone();
            let provisional = Guarded {
                precondition: Open {
                    store: &self.store,
                    conversation_id: id.clone(),
                    message_id: message_id.clone(),
                },
                record: ProvisionalItem::ChatMessage(&self.store, ChatMessage::accept(&cmd)),
            };
            Accepted {
                location: format!("/conversations/{id}/messages/{message_id}"),
                body: json!({
                    "conversationId": id, "messageId": message_id, "commandId": ids.command,
                    "status": MessageStatus::Accepted,
                }),
                command: ids.envelope(correlation_id(req), Payload::SendMessage(cmd)),
                provisional,
            }
        })
        .await
    }

    async fn receipt(
        &self,
        req: &Request,
        id: ConversationId,
        message_id: MessageId,
    ) -> Result<Response<Body>, Error> {
        let (request, body): (Value, ReceiptBody) = parse_command(req)?;
        command::idempotency_key(req)?;
        if self.store.message(&id, &message_id).await?.is_none() {
            return Err(Error::NotFound(format!("no message {message_id} in {id}")));
        }
        command::accept(&self.idempotency, &self.commands, req, &request, |ids| {
            let cmd = RecordReceipt {
                conversation_id: id.clone(),
                message_id: message_id.clone(),
                status: body.status,
            };
            Accepted {
                location: format!("/conversations/{id}/messages/{message_id}"),
                body: json!({ "conversationId": id, "messageId": message_id, "commandId": ids.command }),
                command: ids.envelope(correlation_id(req), Payload::RecordReceipt(cmd)),
                provisional: Guarded {
                    precondition: NotRejected {
                        store: &self.store,
                        conversation_id: id.clone(),
                        message_id: message_id.clone(),
                        command: ids.command,
                    },
                    record: NothingProvisional,
                },
            }
        })
        .await
    }

    /// Closing an already closed conversation is accepted too (and changes nothing).
    async fn close(&self, req: &Request, id: ConversationId) -> Result<Response<Body>, Error> {
        let request = if req.body().as_ref().iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            parse_command::<CloseBody>(req)?.0
        };
        command::idempotency_key(req)?;
        self.conversation(&id).await?;
        command::accept(&self.idempotency, &self.commands, req, &request, |ids| {
            let cmd = CloseConversation {
                conversation_id: id.clone(),
            };
            Accepted {
                location: format!("/conversations/{id}"),
                body: json!({ "conversationId": id, "commandId": ids.command }),
                command: ids.envelope(correlation_id(req), Payload::CloseConversation(cmd)),
                provisional: NothingProvisional,
            }
        })
        .await
    }
}
