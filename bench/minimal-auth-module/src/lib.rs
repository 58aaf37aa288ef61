//! The minimal native authentication fixture (Envoy 1.40, ABI "v0.2.0"): reads `Authorization`,
//! sets `x-user`, removes the credential, and answers 401 without one. What every native
//! authentication filter does at least, through the same callbacks the multitokens module uses.
#![allow(clippy::missing_safety_doc)]

include!("../../module-fixture.rs");

/// A header the module owns (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
pub struct Header {
    key: Buffer,
    value: Buffer,
}

extern "C" {
    fn envoy_dynamic_module_callback_http_get_header(
        filter: *mut c_void,
        map: u32,
        key: Buffer,
        out: *mut Buffer,
        index: usize,
        count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(filter: *mut c_void, map: u32, key: Buffer, value: Buffer)
        -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter: *mut c_void,
        status: u32,
        headers: *mut Header,
        headers_size: usize,
        body: Buffer,
        details: Buffer,
    );
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
const REQUEST_HEADERS: u32 = 0;

/// A request with a credential continues as `x-user: someone` without it; one without gets 401.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: *mut c_void,
    _state: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    let mut value = Buffer::none();
    let found = envoy_dynamic_module_callback_http_get_header(
        filter,
        REQUEST_HEADERS,
        Buffer::of(b"authorization"),
        &mut value,
        0,
        std::ptr::null_mut(),
    );
    if !found || value.ptr.is_null() || value.length <= 7 {
        let mut headers = [Header { key: Buffer::of(b"www-authenticate"), value: Buffer::of(b"Bearer") }];
        envoy_dynamic_module_callback_http_send_response(
            filter,
            401,
            headers.as_mut_ptr(),
            headers.len(),
            Buffer::none(),
            Buffer::of(b"minimal_auth"),
        );
        return 1; // StopIteration: the reply was sent
    }
    envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADERS,
        Buffer::of(b"x-user"),
        Buffer::of(b"someone"),
    );
    envoy_dynamic_module_callback_http_set_header(
        filter,
        REQUEST_HEADERS,
        Buffer::of(b"authorization"),
        Buffer::none(),
    );
    0 // Continue
}
