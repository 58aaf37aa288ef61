//! Mints well-formed tokens that no store knows, with the core's own code (for `make bench`):
//! `mint_tokens <count> [--bad-checksum]`, one per line, for users `user-0` … `user-99`.

use multitokens::core::token;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(count) = args.first().and_then(|c| c.parse::<usize>().ok()) else {
        eprintln!("usage: mint_tokens <count> [--bad-checksum]");
        return std::process::ExitCode::from(2);
    };
    let bad = args.iter().any(|a| a == "--bad-checksum");
    let mut out = String::new();
    for i in 0..count {
        let Ok(t) = token::generate(token::DEFAULT_PREFIX, &format!("user-{}", i % 100)) else {
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
