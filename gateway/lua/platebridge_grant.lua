-- PlateBridge gateway, nginx data plane: verify a media grant and name the host-store file.
--
-- Loaded by the config `platebridge-gateway nginx-conf` writes (LuaJIT through Debian's
-- libnginx-mod-http-lua 0.10 with lua-resty-core; nginx-extras brings both):
--
--   init_by_lua_block { require("platebridge_grant").init("<hex>,<hex>") }  -- grant keys
--   set_by_lua_block $pb_store_file { return require("platebridge_grant").store_file() }
--
-- store_file() gives, for a GET/HEAD of /streams/<camera_id>/<path>?pb_grant=<grant>:
--
--   "/<sha256>.data"  the host-store file of that segment, when the grant is a valid media
--                     grant for exactly this camera, path and (empty) query, not expired;
--   "/-"              anything else (no file has that name: nginx hands the request to the
--                     gateway, which answers it, or refuses it with its reason).
--
-- So nginx never serves a byte without a grant the gateway minted for that very URI, and never
-- refuses anything itself: every refusal, and every miss, is the gateway's (only a request
-- nginx cannot parse, such as a NUL in the path, gets nginx's own 400, and TRACE its 405). The checks are those
-- of gateway/grants.py GrantSigner.verify (the wire form is documented there):
--
--   grant = base64url(body || mac), no padding, 40-160 characters, one spelling
--   body  = version 2 | kind (1 = media) | exp (uint32 BE, Unix s) | session_exp (uint32 BE)
--           | sid (8 bytes) | len(pod_id) (1) | pod_id (DNS label)
--   mac   = HMAC-SHA256(key, "pbg2" | body | lp(camera_id) | lp(path) | lp(query))[:16]
--           (RFC 2104)
--   lp(x) = uint16 BE length | UTF-8 bytes
--
-- and the file name is gateway/hoststore.py key_name((pod_id, camera_id, path, "")):
--   sha256("pbk1\n" + pod_id + "\n" + camera_id + "\n" + path + "\n" + "" + "\n") as hex.
--
-- Only immutable media segments (.ts .m4s .aac .vtt, RFC 8216 §3) are served here: init
-- segments (EXT-X-MAP, .mp4) are revalidated and keys (.key) never reach the store, so both
-- always go to the gateway, as do playlists.
--
-- Why Lua and not njs: the check runs on every cache hit, and nginx's whole static hit of a
-- 125 KB segment costs about 17 us of CPU. In njs 0.7 the check took 7.9 us (an interpreter:
-- every call and allocation counts), which held the data plane to 0.63-0.72x nginx's rate;
-- here the HMAC's inner and outer SHA-256 states are computed once per key (RFC 2104 §4) and
-- each hit costs two compression runs of libcrypto through the FFI, with the target read by a
-- byte scanner that LuaJIT compiles (docs/benchmarks.md).

local ffi = require "ffi"
local bit = require "bit"
local base64 = require "ngx.base64"

local bxor, bor, band, rshift = bit.bxor, bit.bor, bit.band, bit.rshift
local byte, char, find, sub = string.byte, string.char, string.find, string.sub
local decode_base64url = base64.decode_base64url

-- OpenSSL's SHA256_CTX (include/openssl/sha.h, 1.1 and 3.x): the state copied per hit. The
-- low-level SHA-256 calls are deprecated in OpenSSL 3 but exported, and nginx links libcrypto
-- already (ffi.C finds them in the process).
ffi.cdef [[
typedef struct { unsigned int h[8]; unsigned int Nl, Nh; unsigned int data[16];
                 unsigned int num, md_len; } pb_sha256_ctx;
int SHA256_Init(pb_sha256_ctx *c);
int SHA256_Update(pb_sha256_ctx *c, const void *data, size_t len);
int SHA256_Final(unsigned char *md, pb_sha256_ctx *c);
]]
local C = ffi.C

local M = {}

local HEAD = 19 -- 1 + 1 + 4 + 4 + 8 + 1 bytes
local MAC = 16 -- bytes
local NONE = "/-"
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local HEX = "0123456789abcdef"
-- the whole request target, scanned byte by byte by scan_target() below:
--
--   ^/streams/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/((?:[A-Za-z0-9_-][A-Za-z0-9_.-]*/)*
--   [A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:ts|m4s|aac|vtt))\?pb_grant=([A-Za-z0-9_-]{40,160})\z
--
-- and nothing else (tests/gateway/test_lua_grant.py holds this pattern and checks the scanner
-- against PCRE's answers). The path's segments start with a letter, digit, "_" or "-", so no
-- "", "." or ".." segment and no "%" escape: nginx's $uri of such a target is the target's path
-- as it is (no normalising), which is the path the gateway itself would check. A scanner and
-- not ngx.re.match: the capture loop inside lua-resty-core's ngx.re.match aborted LuaJIT's root
-- trace ("inner loop in root trace"), so the whole check ran in the interpreter.
local MAX_TARGET = 9 + 64 + 1 + 127 + 10 + 160 -- bytes: what the grammar and the lp() below admit

-- byte classes of the grammar above
local ALNUM, WORD, DOT = 1, 2, 3 -- A-Za-z0-9; "_" and "-"; "."
local CLASS = ffi.new("uint8_t[256]") -- 0: not allowed anywhere in the target's parts
for x = 48, 57 do CLASS[x] = ALNUM end
for x = 65, 90 do CLASS[x] = ALNUM end
for x = 97, 122 do CLASS[x] = ALNUM end
CLASS[95], CLASS[45], CLASS[46] = WORD, WORD, DOT

local function literal_at(t, i, lit)
    -- whether ``t`` holds ``lit`` at byte ``i``
    for j = 1, #lit do
        if byte(t, i + j - 1) ~= byte(lit, j) then
            return false
        end
    end
    return true
end

local function ends_with(t, last, ext)
    -- whether the bytes of ``t`` up to ``last`` end in ``ext``
    return literal_at(t, last - #ext + 1, ext)
end

--- The camera id, path and grant of a request target of the grammar above, or nil. Pure:
--- exported for the differential test against the pattern.
function M.scan_target(t)
    local len = #t
    if not literal_at(t, 1, "/streams/") then
        return nil
    end
    -- the camera id: a letter or digit, then up to 63 of A-Za-z0-9 _ . -, then "/"
    local i = 10
    local x = byte(t, i)
    if x == nil or CLASS[x] ~= ALNUM then
        return nil
    end
    repeat
        i = i + 1
        x = byte(t, i)
        if x == nil then
            return nil
        end
    until x == 47 or CLASS[x] == 0
    if x ~= 47 or i - 10 > 64 then
        return nil
    end
    -- the path: "/"-separated segments, none empty, none starting with "."; up to the "?"
    local from = i + 1
    local segment = from
    i = from
    while true do
        x = byte(t, i)
        if x == 63 or x == nil then
            break
        end
        if x == 47 then
            if i == segment then
                return nil
            end
            segment = i + 1
        else
            local c = CLASS[x]
            if c == 0 or (c == DOT and i == segment) then
                return nil
            end
        end
        i = i + 1
    end
    -- the last segment: a media segment's name, at least one byte before its extension
    local last, size = i - 1, i - segment
    if x ~= 63 or not ((size >= 4 and ends_with(t, last, ".ts")) or (size >= 5 and (ends_with(t, last, ".m4s")
        or ends_with(t, last, ".aac") or ends_with(t, last, ".vtt")))) then
        return nil
    end
    -- the query: pb_grant and 40-160 base64url characters to the very end
    if not literal_at(t, i, "?pb_grant=") then
        return nil
    end
    local grant = i + 10
    if len - grant + 1 < 40 or len - grant + 1 > 160 then
        return nil
    end
    for j = grant, len do
        local c = CLASS[byte(t, j)]
        if c ~= ALNUM and c ~= WORD then
            return nil
        end
    end
    return sub(t, 10, from - 2), sub(t, from, last), sub(t, grant)
end

-- per key (the signing key first): SHA-256 states after (key xor ipad) and (key xor opad)
local inner, outer = {}, {}
-- scratch, reused by every request of this worker (set_by_lua never yields)
local work = ffi.new("pb_sha256_ctx")
local CTX_BYTES = ffi.sizeof("pb_sha256_ctx")
local digest = ffi.new("unsigned char[32]")
local hex = ffi.new("char[64]")

local scratch = ffi.new("pb_sha256_ctx")

local function sha256(data, len)
    -- SHA-256 of ``len`` bytes at ``data`` into ``digest``. The low-level calls: OpenSSL 3's
    -- one-shot SHA256() goes through EVP_Q_digest, a provider fetch and a malloc per call
    C.SHA256_Init(scratch)
    C.SHA256_Update(scratch, data, len)
    C.SHA256_Final(digest, scratch)
end

local function keyed(key)
    -- the SHA-256 states after (key xor ipad) and (key xor opad): HMAC's first block, the same
    -- for every message (RFC 2104 §4)
    if #key > 64 then -- longer than SHA-256's block: HMAC uses its hash (RFC 2104 §2)
        sha256(key, #key)
        key = ffi.string(digest, 32)
    end
    local pad_i, pad_o = ffi.new("unsigned char[64]"), ffi.new("unsigned char[64]")
    for j = 0, 63 do
        local k = byte(key, j + 1) or 0
        pad_i[j], pad_o[j] = bxor(k, 0x36), bxor(k, 0x5c)
    end
    local i, o = ffi.new("pb_sha256_ctx"), ffi.new("pb_sha256_ctx")
    if C.SHA256_Init(i) ~= 1 or C.SHA256_Update(i, pad_i, 64) ~= 1
        or C.SHA256_Init(o) ~= 1 or C.SHA256_Update(o, pad_o, 64) ~= 1 then
        error("platebridge_grant: libcrypto's SHA-256 failed")
    end
    return i, o
end

local function hmac(i, o, msg)
    -- HMAC-SHA256 of msg into ``digest`` (32 bytes), from a key's keyed() states
    ffi.copy(work, i, CTX_BYTES)
    C.SHA256_Update(work, msg, #msg)
    C.SHA256_Final(digest, work)
    ffi.copy(work, o, CTX_BYTES)
    C.SHA256_Update(work, digest, 32)
    C.SHA256_Final(digest, work)
end

local function to_hex(bytes)
    -- ``bytes`` (a uint8_t array of 32) as 64 lowercase hex characters
    for i = 0, 31 do
        local x = bytes[i]
        hex[2 * i] = byte(HEX, rshift(x, 4) + 1)
        hex[2 * i + 1] = byte(HEX, band(x, 15) + 1)
    end
    return ffi.string(hex, 64)
end

--- Check this process's HMAC-SHA256 against RFC 4231's test cases 2 (a short key) and 6 (a
--- key longer than the block), so that a libcrypto whose SHA256_CTX differs from the one
--- declared above fails here, loudly, and not as every grant refused. Raises a Lua error.
function M.self_test()
    local cases = {
        {"Jefe", "what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {string.rep("\170", 131), "Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
    }
    for n, case in ipairs(cases) do
        local i, o = keyed(case[1])
        hmac(i, o, case[2])
        if to_hex(digest) ~= case[3] then
            error("platebridge_grant: HMAC-SHA256 through libcrypto is wrong (RFC 4231 case " .. n .. ")")
        end
    end
    return true
end

--- Load the grant keys: ``hexkeys`` is "<hex>,<hex>,..." (each key at least 16 bytes, the
--- signing key first, as gateway.config GatewayConfig.grant_keys()), after :func:`self_test`.
--- Raises a Lua error (nginx then does not start) for no key, a key that is not hex or too
--- short, or a libcrypto whose SHA-256 is not what this module expects.
function M.init(hexkeys)
    M.self_test()
    local ins, outs = {}, {}
    for h in string.gmatch(hexkeys, "[^,]+") do
        if not string.find(h, "^%x+$") or #h % 2 ~= 0 or #h < 32 then
            error("platebridge_grant.init: a grant key must be at least 16 bytes, in hex")
        end
        local i, o = keyed((string.gsub(h, "..", function(x) return char(tonumber(x, 16)) end)))
        ins[#ins + 1], outs[#outs + 1] = i, o
    end
    if #ins == 0 then
        error("platebridge_grant.init: no grant key")
    end
    inner, outer = ins, outs
end

local function canonical(t)
    -- the one base64url spelling (what re-encoding the decoded bytes gives): only the alphabet
    -- (scan_target), no length 4k+1, no bits set past the last byte
    local rest = #t % 4
    if rest == 0 then
        return true
    end
    if rest == 1 then
        return false
    end
    local v = find(B64, sub(t, -1), 1, true) - 1
    return v % (rest == 2 and 16 or 4) == 0
end

local function dns_label(text)
    -- a lower-case RFC 1123 label of 1-63 characters: a-z 0-9 "-", no "-" first or last
    -- (protocol/ids.py is_dns_label). A byte loop: LuaJIT's JIT does not compile string.find
    -- with a pattern
    local len = #text
    if len < 1 or len > 63 or byte(text, 1) == 45 or byte(text, len) == 45 then
        return false
    end
    for i = 1, len do
        local x = byte(text, i)
        if not ((x >= 97 and x <= 122) or (x >= 48 and x <= 57) or x == 45) then
            return false
        end
    end
    return true
end

local function check()
    local method = ngx.req.get_method()
    if method ~= "GET" and method ~= "HEAD" then
        return NONE
    end
    -- the target exactly as sent (no other query parameter, no second pb_grant): nginx decodes
    -- and normalises $uri (dot segments, "//", %2F), the gateway refuses such spellings, and
    -- scan_target admits none of them, so nothing is served here that the gateway would refuse
    local target = ngx.var.request_uri
    if #target > MAX_TARGET then
        return NONE
    end
    local camera, path, grant = M.scan_target(target)
    -- the camera (at most 64) and the path (below 128) fit lp()'s one-byte length below; a
    -- longer path goes to the gateway
    if not camera or find(camera, "..", 1, true) or #path > 127 or not canonical(grant) then
        return NONE
    end
    local raw = decode_base64url(grant)
    if not raw then
        return NONE
    end
    local n = #raw - MAC
    local version, kind, a, b, c, d, e, f, g, h = byte(raw, 1, 10)
    if version ~= 2 or kind ~= 1 or n ~= HEAD + (byte(raw, HEAD) or -1000) then
        return NONE -- not version 2, not a media grant, or a bad length
    end
    local now = ngx.now() -- s, the event loop's clock (ms resolution)
    if now > ((a * 256 + b) * 256 + c) * 256 + d or now > ((e * 256 + f) * 256 + g) * 256 + h then
        return NONE -- expired: the gateway says so
    end
    local msg = "pbg2" .. sub(raw, 1, n) .. "\0" .. char(#camera) .. camera .. "\0" .. char(#path) .. path
        .. "\0\0"
    for k = 1, #inner do -- the signing key first: usually the only one
        hmac(inner[k], outer[k], msg)
        local diff = 0 -- constant time over the 16 bytes
        for i = 0, MAC - 1 do
            diff = bor(diff, bxor(digest[i], byte(raw, n + 1 + i)))
        end
        if diff == 0 then
            -- the pod id, under the MAC: a lower-case RFC 1123 DNS label (protocol/ids.py
            -- is_dns_label), as the gateway checks it; it never mints another, and a grant
            -- that holds one is the gateway's to refuse
            local pod = sub(raw, HEAD + 1, n)
            if not dns_label(pod) then
                return NONE
            end
            local name = "pbk1\n" .. pod .. "\n" .. camera .. "\n" .. path .. "\n\n"
            sha256(name, #name)
            return "/" .. to_hex(digest) .. ".data"
        end
    end
    return NONE
end

--- The host-store file for this request ("/<64 hex>.data"), or "/-" (no such file: the
--- gateway answers). Never raises: a Lua error would answer 500 and put the request line,
--- grant included, in nginx's error log; whatever goes wrong, the gateway answers instead.
function M.store_file()
    local ok, name = pcall(check)
    if ok then
        return name
    end
    return NONE
end

return M
