//! Mints well-formed tokens that no store knows, with the core's own code (for `make bench`):
//! `mint_tokens <count> [--bad-checksum | --forged]`, one per line, for users `user-0` … `user-99`.
//!
//! - default: genuine but unknown tokens, minted under `MULTITOKENS_HASH_KEY` (as revoked or
//!   expired ones are): the edge looks each up once;
//! - `--forged`: a right checksum and a made-up MAC, as anyone can make: refused without a lookup;
//! - `--bad-checksum`: a broken checksum.

use multitokens_core::{digest::TokenHasher, token};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|c| c.parse::<usize>().ok()) else {
        eprintln!("usage: mint_tokens <count> [--bad-checksum | --forged]");
        return std::process::ExitCode::from(2);
    };
    let bad = args.iter().any(|a| a == "--bad-checksum");
    let forged = args.iter().any(|a| a == "--forged");
    let hasher = TokenHasher::new(std::env::var("MULTITOKENS_HASH_KEY").ok().as_deref().map(str::as_bytes));
    let mut out = String::new();
    for i in 0..count {
        let user = format!("user-{}", i % 100);
        let minted =
            if forged { token::forge(token::DEFAULT_PREFIX, &user) } else { hasher.mint(token::DEFAULT_PREFIX, &user) };
        let Ok(t) = minted else {
            eprintln!("mint_tokens: the OS random source failed");
            return std::process::ExitCode::from(1);
        };
        let t = if bad { token::with_bad_checksum(&t, token::DEFAULT_PREFIX).unwrap_or(t) } else { t };
        out.push_str(&t);
        out.push('\n');
    }
    print!("{out}");
    std::process::ExitCode::SUCCESS
}
