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

const URI = /^\/streams\/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\/((?:[A-Za-z0-9_-][A-Za-z0-9_.-]*\/)*[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(?:ts|m4s|aac|vtt))$/;
const GRANT = /^[A-Za-z0-9_-]{40,160}$/;
const POD = /^(?!-)[a-z0-9-]{1,63}$/;
const HEAD = 19; // 1 + 1 + 4 + 4 + 8 + 1
const MAC = 16;
const NONE = '/-';

function lp(h, text) { // uint16 BE length, then the text (ASCII: the URI pattern admits nothing else)
    h.update(Buffer.from([text.length >> 8, text.length & 255]));
    h.update(text);
}

function same(a, b) { // constant time for equal lengths
    if (a.length !== b.length) {
        return false;
    }
    let diff = 0;
    for (let i = 0; i < a.length; i++) {
        diff |= a[i] ^ b[i];
    }
    return diff === 0;
}

function grantOf(args) { // the one pb_grant value, only when nothing else is in the query
    if (!args) {
        return null;
    }
    const parts = args.split('&');
    if (parts.length !== 1 || parts[0].indexOf('pb_grant=') !== 0) {
        return null;
    }
    return parts[0].slice(9);
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
    // the path exactly as sent: nginx decodes and normalises $uri (dot segments, "//", %2F),
    // the gateway refuses such spellings, and so nothing is served here that it would refuse
    const asked = (r.variables.request_uri || '').split('?')[0];
    const m = URI.exec(asked);
    if (!m || asked !== r.variables.uri || m[1].indexOf('..') !== -1 || asked.length > 320) {
        return NONE;
    }
    const camera = m[1];
    const path = m[2];
    const token = grantOf(r.variables.args);
    if (token === null || !GRANT.test(token)) {
        return NONE;
    }
    const raw = Buffer.from(token, 'base64url');
    if (raw.toString('base64url') !== token || raw.length < HEAD + 1 + MAC) {
        return NONE;
    }
    const body = raw.slice(0, raw.length - MAC);
    const mac = raw.slice(raw.length - MAC);
    if (body[0] !== 2 || body[1] !== 1 || body.length !== HEAD + body[18]) {
        return NONE; // not version 2, not a media grant, or a bad length
    }
    const pod = body.slice(HEAD).toString('utf8');
    if (!POD.test(pod) || pod.length !== body.length - HEAD) {
        return NONE;
    }
    const now = Date.now() / 1000;
    if (now > body.readUInt32BE(2) || now > body.readUInt32BE(6)) {
        return NONE; // expired: the gateway says so
    }
    const keys = (r.variables.pb_grant_keys || '').split(',');
    let ok = false;
    for (let i = 0; i < keys.length && !ok; i++) { // the signing key first: usually the only one
        if (keys[i].length >= 32) {
            const h = crypto.createHmac('sha256', Buffer.from(keys[i], 'hex'));
            h.update('pbg2');
            h.update(body);
            lp(h, camera);
            lp(h, path);
            lp(h, '');
            ok = same(h.digest().slice(0, MAC), mac);
        }
    }
    if (!ok) {
        return NONE;
    }
    const name = crypto.createHash('sha256').update('pbk1\n' + pod + '\n' + camera + '\n' + path + '\n' + '\n').digest('hex');
    return '/' + name + '.data';
}

export default {store_file};
