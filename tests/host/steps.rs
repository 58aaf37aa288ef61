//! Driving the guest one ABI call at a time (the fuzz tests): begin, answer, tick, end.

use super::*;

/// A callout the guest started, as the scripted driver sees it.
#[derive(Clone, Debug)]
pub struct PendingCall {
    /// The call's token.
    pub token: u32,
    /// The context that was in effect when it was made.
    pub context: u32,
    /// A Redis call (else an HTTP call).
    pub redis: bool,
}

/// Where the current request stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Answered locally with this status.
    Replied(u32),
    /// Forwarded with these headers.
    Forwarded(RawHeaders),
    /// Still paused.
    Pending,
}

/// The scripted driver: every guest call returns `Err` with the trap instead of panicking, and
/// the test, not the host, decides when and how each callout is answered (for property tests).
impl TestHost {
    /// Loads and configures; `Ok(None)` when the guest refuses the configuration.
    pub fn try_load(wasm: &Path, plugin_config: &[u8], upstreams: Upstreams) -> Result<Option<TestHost>, String> {
        Self::start(wasm, plugin_config, upstreams).map(|(host, configured)| configured.then_some(host))
    }

    /// Loads, starts and configures the VM; the host and whether the guest took its configuration
    /// (`Err`: the guest trapped).
    pub(super) fn start(wasm: &Path, plugin_config: &[u8], upstreams: Upstreams) -> Result<(TestHost, bool), String> {
        let config = String::from_utf8_lossy(plugin_config).into_owned();
        let engine = Engine::default();
        let module = Module::new(&engine, std::fs::read(wasm).unwrap()).map_err(|e| e.to_string())?;
        let mut linker = Linker::<State>::new(&engine);
        link(&mut linker);
        for import in module.imports() {
            if let wasmi::ExternType::Func(ty) = import.ty() {
                let ty = ty.clone();
                let _ = linker.func_new(import.module(), import.name(), ty, |_, _, out| {
                    for slot in out.iter_mut() {
                        *slot = Val::I32(UNIMPLEMENTED);
                    }
                    Ok(())
                });
            }
        }
        let state = State {
            plugin_config: plugin_config.to_vec(),
            upstreams,
            client_address: "192.0.2.1:40000".into(),
            ..State::default()
        };
        let mut store = Store::new(&engine, state);
        let instance = linker.instantiate_and_start(&mut store, &module).map_err(|e| e.to_string())?;
        let mut host = TestHost { store, instance, root_id: 1, next_context: 1 };
        if host.export("_initialize").is_some() {
            host.try_call("_initialize", &[])?;
        }
        host.try_call("proxy_on_context_create", &[Val::I32(1), Val::I32(0)])?;
        host.try_call("proxy_on_vm_start", &[Val::I32(1), Val::I32(0)])?;
        let configured = host.try_call("proxy_on_configure", &[Val::I32(1), Val::I32(config.len() as i32)])?;
        Ok((host, configured == 1))
    }

    pub(super) fn try_call(&mut self, name: &str, args: &[Val]) -> Result<i32, String> {
        let func = self.export(name).ok_or_else(|| format!("guest does not export {name}"))?;
        let ty = func.ty(&self.store);
        let mut out: Vec<Val> = ty.results().iter().map(|_| Val::I32(0)).collect();
        func.call(&mut self.store, args, &mut out)
            .map_err(|e| format!("{name} trapped: {e}\nlogs:\n{}", self.logs().join("\n")))?;
        Ok(match out.first() {
            Some(Val::I32(v)) => *v,
            _ => 0,
        })
    }

    /// Starts a request with exactly these headers; its context id.
    pub fn try_begin(&mut self, headers: RawHeaders, client: &str) -> Result<u32, String> {
        self.next_context += 1;
        let ctx = self.next_context;
        {
            let s = self.store.data_mut();
            s.streams.insert(ctx, Stream { request_headers: headers, ..Stream::default() });
            s.current = ctx;
            s.effective_context = ctx;
            s.client_address = client.into();
        }
        self.try_call("proxy_on_context_create", &[Val::I32(ctx as i32), Val::I32(self.root_id as i32)])?;
        let n = self.store.data().current().request_headers.len() as i32;
        if self.try_call("proxy_on_request_headers", &[Val::I32(ctx as i32), Val::I32(n), Val::I32(1)])? == 0 {
            self.store.data_mut().stream().continued = true;
        }
        Ok(ctx)
    }

    /// Where the request begun last stands.
    pub fn decision(&self) -> Decision {
        self.decision_of(self.store.data().current)
    }

    /// Where the request of context `ctx` stands.
    pub fn decision_of(&self, ctx: u32) -> Decision {
        let s = self.store.data().streams.get(&ctx).cloned().unwrap_or_default();
        match (&s.local_reply, s.continued) {
            (Some(r), _) => Decision::Replied(r.status),
            (None, true) => Decision::Forwarded(s.request_headers.clone()),
            (None, false) => Decision::Pending,
        }
    }

    /// Whether the guest both replied locally and resumed a request (never allowed).
    pub fn replied_and_resumed(&self) -> bool {
        self.store.data().streams.values().any(|s| s.local_reply.is_some() && s.continued)
    }

    /// The callouts started since the last call.
    pub fn take_calls(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.store.data_mut().callouts)
            .into_iter()
            .map(|c| match c {
                Callout::Http { token, context, .. } => PendingCall { token, context, redis: false },
                Callout::Redis { token, .. } => PendingCall { token, context: self.root_id, redis: true },
            })
            .collect()
    }

    /// Answers an HTTP call (`None`: no response, as after a timeout or reset).
    pub fn try_answer_http(
        &mut self,
        context: u32,
        token: u32,
        answer: Option<(RawHeaders, Vec<u8>)>,
    ) -> Result<(), String> {
        let (n, size) = {
            let s = self.store.data_mut();
            s.effective_context = context;
            match answer {
                Some((headers, body)) => {
                    let (n, size) = (headers.len(), body.len());
                    s.call_response_headers = headers;
                    s.call_response_body = body;
                    (n, size)
                }
                None => {
                    s.call_response_headers.clear();
                    s.call_response_body.clear();
                    (0, 0)
                }
            }
        };
        self.try_call(
            "proxy_on_http_call_response",
            &[Val::I32(context as i32), Val::I32(token as i32), Val::I32(n as i32), Val::I32(size as i32), Val::I32(0)],
        )?;
        Ok(())
    }

    /// Answers a Redis call (`None`: a network error).
    pub fn try_answer_redis(&mut self, token: u32, reply: Option<Vec<u8>>) -> Result<(), String> {
        let (status, size) = match reply {
            Some(r) => {
                let size = r.len();
                self.store.data_mut().redis_response = r;
                (0, size)
            }
            None => (1, 0),
        };
        self.store.data_mut().effective_context = self.root_id;
        self.try_call(
            "proxy_on_redis_call_response",
            &[Val::I32(self.root_id as i32), Val::I32(token as i32), Val::I32(status), Val::I32(size as i32)],
        )?;
        self.store.data_mut().redis_response.clear();
        Ok(())
    }

    /// One timer tick; its callouts are left for the script to answer.
    pub fn try_tick(&mut self) -> Result<(), String> {
        self.store.data_mut().effective_context = self.root_id;
        self.try_call("proxy_on_tick", &[Val::I32(self.root_id as i32)])?;
        Ok(())
    }

    /// Ends a request (done, log, delete), as after the stream finished or was reset. Like
    /// Envoy's proxy-wasm host, done and log are called only when the guest exports them (done
    /// then counts as "yes"); delete is required.
    pub fn try_end(&mut self, ctx: u32) -> Result<(), String> {
        self.store.data_mut().effective_context = ctx;
        for optional in ["proxy_on_done", "proxy_on_log"] {
            if self.export(optional).is_some() {
                self.try_call(optional, &[Val::I32(ctx as i32)])?;
            }
        }
        self.try_call("proxy_on_delete", &[Val::I32(ctx as i32)])?;
        self.store.data_mut().streams.remove(&ctx);
        Ok(())
    }
}
