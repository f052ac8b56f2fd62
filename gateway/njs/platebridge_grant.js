// PlateBridge gateway, nginx data plane: verify a media grant and name the host-store file.
//
// Loaded by the config `platebridge-gateway nginx-conf` writes (njs 0.7+, Debian package
// libnginx-mod-http-js). `js_set $pb_store_file platebridge_grant.store_file;` gives, for a
// GET/HEAD of /streams/<camera_id>/<path>?pb_grant=<grant>:
//
//   "/<sha256>.data"  the host-store file of that segment, when the grant is a valid media
//                     grant for exactly this camera, path and (empty) query, not expired;
//   "/-"              anything else (no file has that name: nginx hands the request to the
//                     gateway, which answers it, or refuses it with its reason).
//
// So nginx never serves a byte without a grant the gateway minted for that very URI, and never
// refuses anything itself: every refusal, and every miss, is the gateway's. The checks are those
// of gateway/grants.py GrantSigner.verify (the wire form is documented there):
//
//   grant = base64url(body || mac), no padding, 40-160 characters, one spelling
//   body  = version 2 | kind (1 = media) | exp (uint32 BE, Unix s) | session_exp (uint32 BE)
//           | sid (8 bytes) | len(pod_id) (1) | pod_id (DNS label)
//   mac   = HMAC-SHA256(key, "pbg2" | body | lp(camera_id) | lp(path) | lp(query))[:16]
//   lp(x) = uint16 BE length | UTF-8 bytes
//
// and the file name is gateway/hoststore.py key_name((pod_id, camera_id, path, "")):
//   sha256("pbk1\n" + pod_id + "\n" + camera_id + "\n" + path + "\n" + "" + "\n") as hex (query "").
//
// Only immutable media segments (.ts .m4s .aac .vtt, RFC 8216 §3) are served here: init
// segments (EXT-X-MAP, .mp4) are revalidated and keys (.key) never reach the store, so both
// always go to the gateway, as do playlists.
//
// Keys: `js_var $pb_grant_keys "<hex>,<hex>";` (the gateway's grant keys, signing key first).

const crypto = require('crypto');

// Each request runs this in njs's bytecode interpreter, where every call and allocation counts
// (a hit's njs work was as much as nginx's own): one check per step, plain string operations,
// no Buffer slices. `bench/gateway_vs_nginx.py` measures it.
// the whole request target: /streams/<camera>/<path>?pb_grant=<grant>, nothing else. The path's
// segments start with a letter, digit, "_" or "-", so no "", "." or ".." segment and no "%"
// escape: nginx's $uri of such a target is the target's path as it is (no normalising), which
// is the path the gateway itself would check.
const TARGET = /^\/streams\/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\/((?:[A-Za-z0-9_-][A-Za-z0-9_.-]*\/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:ts|m4s|aac|vtt))\?pb_grant=([A-Za-z0-9_-]{40,160})$/;
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const HEAD = 19; // 1 + 1 + 4 + 4 + 8 + 1
const MAC = 16;
const NONE = '/-';

function canonical(t) {
    // the one base64url spelling (what re-encoding the decoded bytes gives): only the alphabet
    // (the caller's URI check), no length 4k+1, no bits set past the last byte
    const rest = t.length % 4;
    if (rest === 0) {
        return true;
    }
    if (rest === 1) {
        return false;
    }
    const v = B64.indexOf(t.charAt(t.length - 1));
    return v >= 0 && v % (rest === 2 ? 16 : 4) === 0;
}

function lp(text) {
    // uint16 BE length, then the text, as one string: the URI pattern admits only ASCII, and a
    // length below 128 is one ASCII character too (UTF-8 leaves both as they are)
    return '\u0000' + String.fromCharCode(text.length) + text;
}

function store_file(r) {
    // never throws: an njs exception would put the request line, grant included, in nginx's
    // error log; whatever goes wrong, the gateway answers the request
    try {
        return check(r);
    } catch (e) {
        return NONE;
    }
}

function check(r) {
    if (r.method !== 'GET' && r.method !== 'HEAD') {
        return NONE;
    }
    // the target exactly as sent (no other query parameter, no second pb_grant): nginx decodes
    // and normalises $uri (dot segments, "//", %2F), the gateway refuses such spellings, and
    // TARGET admits none of them, so nothing is served here that the gateway would refuse
    const target = r.variables.request_uri;
    const m = target.length <= 320 + 9 + 160 ? TARGET.exec(target) : null;
    // the camera (at most 64) and the path (below 128) as lp() writes them; a longer path
    // goes to the gateway
    if (!m || m[1].indexOf('..') !== -1 || m[2].length > 127 || !canonical(m[3])) {
        return NONE;
    }
    const token = m[3];
    const raw = Buffer.from(token, 'base64url');
    const n = raw.length - MAC;
    if (raw[0] !== 2 || raw[1] !== 1 || n !== HEAD + raw[18]) {
        return NONE; // not version 2, not a media grant, or a bad length
    }
    const now = Date.now() / 1000;
    if (now > raw.readUInt32BE(2) || now > raw.readUInt32BE(6)) {
        return NONE; // expired: the gateway says so
    }
    const camera = m[1];
    const path = m[2];
    const body = raw.subarray(0, n);
    const rest = lp(camera) + lp(path) + '\u0000\u0000';
    const keys = r.variables.pb_grant_keys || '';
    let start = 0;
    while (start < keys.length) { // the signing key first: usually the only one
        let end = keys.indexOf(',', start);
        end = end === -1 ? keys.length : end;
        if (end - start >= 32) {
            const h = crypto.createHmac('sha256', Buffer.from(keys.substring(start, end), 'hex'));
            const mac = h.update('pbg2').update(body).update(rest).digest();
            let diff = 0; // constant time over the 16 bytes
            for (let i = 0; i < MAC; i++) {
                diff |= mac[i] ^ raw[n + i];
            }
            if (diff === 0) {
                // the pod id is the gateway's own (the MAC covers it): a DNS label, so
                // plain ASCII, which the gateway checked when it minted the grant
                const pod = raw.toString('utf8', HEAD, n);
                const name = crypto.createHash('sha256')
                    .update('pbk1\n' + pod + '\n' + camera + '\n' + path + '\n\n').digest('hex');
                return '/' + name + '.data';
            }
        }
        start = end + 1;
    }
    return NONE;
}

export default {store_file};
