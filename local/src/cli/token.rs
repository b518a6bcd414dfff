//! `local token`: prints a JWT that the template's authorizer accepts locally, signed with the
//! dev key (created on first use), for the issuer and audience of the template's parameters'
//! defaults: the same ones `local dev` checks. Only the token goes to stdout, so
//! `TOKEN=$(local token --role agent)` works.

use super::{Args, CliError};
use crate::auth::{self, Role, TokenRequest};
use crate::template::Template;

pub(super) fn run(args: &Args) -> Result<(), CliError> {
    let template = Template::load(&args.template)?;
    let opts = &args.token;
    if !opts.accounts.is_empty() && !opts.roles.contains(&Role::Trader) {
        return Err(CliError::Usage(
            "--accounts are a trader's accounts: add --role trader".into(),
        ));
    }
    let mut request = TokenRequest::new(&auth::issuer(&template, &args.stack)?, &opts.roles);
    request.accounts.clone_from(&opts.accounts);
    if let Some(subject) = &opts.subject {
        request.subject.clone_from(subject);
    }
    if let Some(ttl) = opts.ttl_secs {
        request.ttl_secs = ttl;
    }
    if opts.roles.contains(&Role::Trader) && request.accounts.is_empty() {
        eprintln!("note: a trader token without --accounts may act on no account");
    }
    println!("{}", auth::mint(&auth::key_dir(&args.template), &request)?);
    Ok(())
}
