//! The proxy-wasm ABI (and the Redis-callout extension) as the test host implements it: the host
//! functions the guest imports, and the callouts they start.

use super::*;

/// Header map types of the proxy-wasm ABI 0.2.1 the guest uses.
const MAP_REQUEST_HEADERS: i32 = 0;
const MAP_HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
/// Buffer types: an HTTP callout's body, the plugin configuration, a Redis callout's reply (the
/// Redis-callout ABI's type 9).
const BUFFER_HTTP_CALL_RESPONSE_BODY: i32 = 4;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;
const BUFFER_REDIS_CALL_RESPONSE: i32 = 9;

pub(super) type Host<'a> = Caller<'a, State>;

pub(super) fn memory(caller: &Host) -> wasmi::Memory {
    caller.get_export("memory").and_then(Extern::into_memory).expect("guest exports memory")
}

pub(super) fn read_bytes(caller: &Host, ptr: i32, len: i32) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    memory(caller).read(caller, ptr as u32 as usize, &mut buf).expect("guest pointer in bounds");
    buf
}

pub(super) fn read_string(caller: &Host, ptr: i32, len: i32) -> String {
    String::from_utf8_lossy(&read_bytes(caller, ptr, len)).into_owned()
}

pub(super) fn write_bytes(caller: &mut Host, ptr: i32, bytes: &[u8]) {
    memory(caller).write(caller, ptr as u32 as usize, bytes).expect("guest pointer in bounds");
}

pub(super) fn write_u32(caller: &mut Host, ptr: i32, value: u32) {
    write_bytes(caller, ptr, &value.to_le_bytes());
}

/// Copies bytes into guest memory allocated by the guest's `proxy_on_memory_allocate`, and
/// writes the pointer and size where the guest asked.
pub(super) fn hand_over(caller: &mut Host, bytes: &[u8], ret_ptr: i32, ret_size: i32) -> i32 {
    if bytes.is_empty() {
        write_u32(caller, ret_ptr, 0);
        write_u32(caller, ret_size, 0);
        return OK;
    }
    let alloc = caller.get_export("proxy_on_memory_allocate").and_then(Extern::into_func).expect("allocator export");
    let mut out = [Val::I32(0)];
    alloc.call(&mut *caller, &[Val::I32(bytes.len() as i32)], &mut out).expect("allocate");
    let Val::I32(addr) = out[0] else { panic!("allocator returned no pointer") };
    write_bytes(caller, addr, bytes);
    write_u32(caller, ret_ptr, addr as u32);
    write_u32(caller, ret_size, bytes.len() as u32);
    OK
}

/// (Header names compare without case, as in Envoy's header maps.)
/// A header map the guest handed over, as text (the guest's own maps are always UTF-8).
pub(super) fn deserialize_map(bytes: &[u8]) -> Vec<(String, String)> {
    header_map::decode(bytes)
        .expect("the guest serialized a valid header map")
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

pub(super) fn map_of(state: &mut State, map_type: i32) -> Option<&mut RawHeaders> {
    match map_type {
        MAP_REQUEST_HEADERS => {
            let ctx = state.effective_context;
            Some(&mut state.streams.entry(ctx).or_default().request_headers)
        }
        MAP_HTTP_CALL_RESPONSE_HEADERS => Some(&mut state.call_response_headers),
        _ => None,
    }
}

/// Defines the host functions.
pub(super) fn link(linker: &mut Linker<State>) {
    linker
        .func_wrap("env", "proxy_log", |c: Host, level: i32, ptr: i32, len: i32| -> i32 {
            let mut c = c;
            c.data_mut().host_calls.push("proxy_log");
            let msg = read_string(&c, ptr, len);
            c.data_mut().logs.push((level, msg));
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Host, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_current_time_nanoseconds");
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            write_bytes(&mut c, ret, &nanos.to_le_bytes());
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Host, period: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_set_tick_period_milliseconds");
            c.data_mut().tick_period_ms = period as u32;
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_get_buffer_bytes",
            |mut c: Host, kind: i32, start: i32, max: i32, ret_ptr: i32, ret_size: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_get_buffer_bytes");
                let data = match kind {
                    BUFFER_HTTP_CALL_RESPONSE_BODY => c.data().call_response_body.clone(),
                    BUFFER_PLUGIN_CONFIGURATION => c.data().plugin_config.clone(),
                    BUFFER_REDIS_CALL_RESPONSE => c.data().redis_response.clone(),
                    _ => return NOT_FOUND,
                };
                let start = (start as u32 as usize).min(data.len());
                let end = start.saturating_add(max as u32 as usize).min(data.len());
                hand_over(&mut c, &data[start..end], ret_ptr, ret_size)
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_get_header_map_pairs", |mut c: Host, map: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_header_map_pairs");
            let Some(pairs) = map_of(c.data_mut(), map).cloned() else { return NOT_FOUND };
            hand_over(&mut c, &header_map::encode(&pairs), ret_ptr, ret_size)
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_get_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_get_header_map_value");
                let key = read_bytes(&c, kp, kl).to_ascii_lowercase();
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                let Some(value) = pairs.iter().find(|(k, _)| k.to_ascii_lowercase() == key).map(|(_, v)| v.clone())
                else {
                    return NOT_FOUND;
                };
                hand_over(&mut c, &value, ret_ptr, ret_size)
            },
        )
        .unwrap()
        .func_wrap(
            "env",
            "proxy_add_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_add_header_map_value");
                let (key, value) = (read_bytes(&c, kp, kl).to_ascii_lowercase(), read_bytes(&c, vp, vl));
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                pairs.push((key, value));
                OK
            },
        )
        .unwrap()
        .func_wrap(
            "env",
            "proxy_replace_header_map_value",
            |mut c: Host, map: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_replace_header_map_value");
                let (key, value) = (read_bytes(&c, kp, kl).to_ascii_lowercase(), read_bytes(&c, vp, vl));
                let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
                pairs.retain(|(k, _)| k.to_ascii_lowercase() != key);
                pairs.push((key, value));
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_remove_header_map_value", |mut c: Host, map: i32, kp: i32, kl: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_remove_header_map_value");
            let key = read_bytes(&c, kp, kl).to_ascii_lowercase();
            let Some(pairs) = map_of(c.data_mut(), map) else { return NOT_FOUND };
            pairs.retain(|(k, _)| k.to_ascii_lowercase() != key);
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_send_local_response",
            |mut c: Host, status: i32, _dp: i32, _dl: i32, bp: i32, bl: i32, hp: i32, hl: i32, _grpc: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_send_local_response");
                let body = read_string(&c, bp, bl);
                let headers = deserialize_map(&read_bytes(&c, hp, hl));
                c.data_mut().stream().local_reply = Some(LocalReply { status: status as u32, headers, body });
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_continue_stream", |mut c: Host, stream: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_continue_stream");
            if stream == 0 {
                c.data_mut().stream().continued = true;
            }
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_get_property", |mut c: Host, pp: i32, pl: i32, ret_ptr: i32, ret_size: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_get_property");
            match read_bytes(&c, pp, pl).as_slice() {
                b"source\0address" => {
                    let address = c.data().client_address.clone();
                    hand_over(&mut c, address.as_bytes(), ret_ptr, ret_size)
                }
                _ => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap("env", "proxy_set_effective_context", |mut c: Host, context: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_set_effective_context");
            c.data_mut().effective_context = context as u32;
            OK
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_http_call",
            |mut c: Host,
             up: i32,
             ul: i32,
             hp: i32,
             hl: i32,
             bp: i32,
             bl: i32,
             _tp: i32,
             _tl: i32,
             timeout: i32,
             ret: i32|
             -> i32 {
                c.data_mut().host_calls.push("proxy_http_call");
                let cluster = read_string(&c, up, ul);
                if !c.data().upstreams.http.contains_key(&cluster) {
                    return BAD_ARGUMENT;
                }
                let headers = deserialize_map(&read_bytes(&c, hp, hl));
                let body = if bl > 0 { read_bytes(&c, bp, bl) } else { vec![] };
                let state = c.data_mut();
                state.next_token += 1;
                let token = state.next_token;
                let context = state.effective_context;
                state.callouts.push(Callout::Http {
                    token,
                    context,
                    cluster,
                    headers,
                    body,
                    timeout_ms: timeout as u32,
                });
                write_u32(&mut c, ret, token);
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_define_metric", |mut c: Host, _kind: i32, np: i32, nl: i32, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_define_metric");
            let name = read_string(&c, np, nl);
            let state = c.data_mut();
            let id = match state.metric_names.iter().position(|n| *n == name) {
                Some(i) => i,
                None => {
                    state.metric_names.push(name);
                    state.metric_values.push(0);
                    state.metric_names.len() - 1
                }
            };
            write_u32(&mut c, ret, id as u32);
            OK
        })
        .unwrap()
        .func_wrap("env", "proxy_increment_metric", |mut c: Host, id: i32, offset: i64| -> i32 {
            c.data_mut().host_calls.push("proxy_increment_metric");
            match c.data_mut().metric_values.get_mut(id as usize) {
                Some(v) => {
                    *v += offset;
                    OK
                }
                None => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap("env", "proxy_record_metric", |mut c: Host, id: i32, value: i64| -> i32 {
            c.data_mut().host_calls.push("proxy_record_metric");
            match c.data_mut().metric_values.get_mut(id as usize) {
                Some(v) => {
                    *v = value;
                    OK
                }
                None => NOT_FOUND,
            }
        })
        .unwrap()
        .func_wrap(
            "env",
            "proxy_redis_init",
            |mut c: Host, sp: i32, sl: i32, up: i32, ul: i32, pp: i32, pl: i32, timeout: i32| -> i32 {
                c.data_mut().host_calls.push("proxy_redis_init");
                let service = read_string(&c, sp, sl);
                let name = service.split('?').next().unwrap_or("").to_string();
                if !c.data().upstreams.redis.contains_key(&name) {
                    return BAD_ARGUMENT;
                }
                let (user, pass) = (read_string(&c, up, ul), read_string(&c, pp, pl));
                c.data_mut().redis_init = Some((service, user, pass, timeout as u32));
                OK
            },
        )
        .unwrap()
        .func_wrap("env", "proxy_redis_call", |mut c: Host, sp: i32, sl: i32, qp: i32, ql: i32, ret: i32| -> i32 {
            c.data_mut().host_calls.push("proxy_redis_call");
            let service = read_string(&c, sp, sl);
            let name = service.split('?').next().unwrap_or("").to_string();
            if !c.data().upstreams.redis.contains_key(&name) {
                return BAD_ARGUMENT;
            }
            let query = read_bytes(&c, qp, ql);
            let state = c.data_mut();
            state.next_token += 1;
            let token = state.next_token;
            state.redis_queries.push(query.clone());
            state.callouts.push(Callout::Redis { token, service, query });
            write_u32(&mut c, ret, token);
            OK
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "random_get", |mut c: Host, ptr: i32, len: i32| -> i32 {
            let mut buf = vec![0u8; len as usize];
            getrandom::fill(&mut buf).unwrap();
            write_bytes(&mut c, ptr, &buf);
            0
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "environ_sizes_get", |mut c: Host, count: i32, size: i32| -> i32 {
            write_u32(&mut c, count, 0);
            write_u32(&mut c, size, 0);
            0
        })
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "environ_get", |_: Host, _: i32, _: i32| -> i32 { 0 })
        .unwrap()
        .func_wrap(
            "wasi_snapshot_preview1",
            "fd_write",
            |mut c: Host, _fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
                let mut total = 0u32;
                let mut text = Vec::new();
                for i in 0..n {
                    let iov = read_bytes(&c, iovs + i * 8, 8);
                    let ptr = u32::from_le_bytes(iov[0..4].try_into().unwrap()) as i32;
                    let len = u32::from_le_bytes(iov[4..8].try_into().unwrap()) as i32;
                    text.extend(read_bytes(&c, ptr, len));
                    total += len as u32;
                }
                c.data_mut().logs.push((-1, String::from_utf8_lossy(&text).into_owned()));
                write_u32(&mut c, written, total);
                0
            },
        )
        .unwrap()
        .func_wrap("wasi_snapshot_preview1", "proc_exit", |_: Host, code: i32| -> Result<(), wasmi::Error> {
            Err(wasmi::Error::new(format!("guest called proc_exit({code})")))
        })
        .unwrap();
}

/// Reads one RESP reply off a stream with core's decoder and returns its raw bytes (the host
/// hands them to the guest uninterpreted, as Envoy does).
pub(super) fn read_resp(reader: &mut impl Read) -> std::io::Result<Vec<u8>> {
    use multitokens_core::resp::{decode_prefix, RespError};
    let mut received = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match decode_prefix(&received) {
            Ok((_, used)) if used == received.len() => return Ok(received),
            Ok(_) => return Err(std::io::Error::other("bytes after the reply")),
            Err(RespError::Incomplete) => {}
            Err(e) => return Err(std::io::Error::other(format!("not RESP: {e:?}"))),
        }
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed mid-reply"));
        }
        received.extend_from_slice(&chunk[..n]);
    }
}

/// Performs an HTTP/1.1 callout; `None` when there is no response (refused, reset, timeout).
pub(super) fn http_call(
    addr: SocketAddr,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u32,
) -> Option<(RawHeaders, Vec<u8>)> {
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(timeout_ms as u64)))
        .build()
        .into();
    let mut request =
        ureq::http::Request::builder().method(get(":method").as_str()).uri(format!("http://{addr}{}", get(":path")));
    for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        request = request.header(k.as_str(), v.as_str());
    }
    let response = agent.run(request.body(body.to_vec()).ok()?).ok()?;
    let mut out = vec![(b":status".to_vec(), response.status().as_u16().to_string().into_bytes())];
    for (k, v) in response.headers() {
        out.push((k.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
    let body = response.into_body().read_to_vec().ok()?;
    Some((out, body))
}
