// Client address filtering, written in C: requests from a denied network
// get a 403, and so do requests from outside the allowed networks, when
// any are listed. Networks are CIDR blocks, IPv4 or IPv6:
//
//     config = { allow = ["10.0.0.0/8", "2001:db8::/32"], deny = ["10.6.6.0/24"] }
//
// Deny wins over allow. An IPv4 client is matched against IPv4 blocks
// whether it came in over IPv4 or as an IPv4-mapped IPv6 address.

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "general_filter.h"

// An address as 16 bytes: IPv4 is kept IPv4-mapped (::ffff:a.b.c.d).
typedef struct {
    uint8_t bytes[16];
    int bits;
} net_t;

typedef struct {
    net_t *nets;
    size_t len;
} nets_t;

static nets_t allow, deny;

static bool parse_v4(const char *s, size_t len, uint8_t out[16]) {
    memset(out, 0, 10);
    out[10] = out[11] = 0xff;
    int part = 0, value = -1;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '.') {
            if (value < 0 || part > 3) return false;
            out[12 + part++] = (uint8_t)value;
            value = -1;
        } else if (s[i] >= '0' && s[i] <= '9') {
            value = (value < 0 ? 0 : value * 10) + (s[i] - '0');
            if (value > 255) return false;
        } else {
            return false;
        }
    }
    return part == 4;
}

static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// IPv6 text, with `::` and a trailing dotted IPv4 part allowed.
static bool parse_v6(const char *s, size_t len, uint8_t out[16]) {
    uint16_t groups[8];
    int count = 0, gap = -1;
    size_t i = 0;
    if (len >= 2 && s[0] == ':' && s[1] == ':') {
        gap = 0;
        i = 2;
    }
    while (i < len) {
        if (count == 8) return false;
        size_t start = i;
        int value = 0;
        while (i < len && hex(s[i]) >= 0 && i - start < 4) value = value * 16 + hex(s[i++]);
        if (i < len && s[i] == '.') {
            uint8_t v4[16];
            if (count > 6 || !parse_v4(s + start, len - start, v4)) return false;
            groups[count++] = (uint16_t)(v4[12] << 8 | v4[13]);
            groups[count++] = (uint16_t)(v4[14] << 8 | v4[15]);
            i = len;
            break;
        }
        if (i == start) return false;
        groups[count++] = (uint16_t)value;
        if (i == len) break;
        if (s[i] != ':') return false;
        i++;
        if (i < len && s[i] == ':') {
            if (gap >= 0) return false;
            gap = count;
            i++;
        } else if (i == len) {
            return false;
        }
    }
    if (gap < 0 ? count != 8 : count > 7) return false;
    int fill = 8 - count;
    for (int g = 0, out_g = 0; out_g < 8; out_g++) {
        uint16_t v = (gap >= 0 && out_g >= gap && out_g < gap + fill) ? 0 : groups[g++];
        out[2 * out_g] = (uint8_t)(v >> 8);
        out[2 * out_g + 1] = (uint8_t)v;
    }
    return true;
}

static bool parse_addr(const char *s, size_t len, uint8_t out[16], bool *v4) {
    *v4 = memchr(s, ':', len) == NULL;
    return *v4 ? parse_v4(s, len, out) : parse_v6(s, len, out);
}

// `a.b.c.d/n` or `x:y::/n`; a bare address is a single host.
static bool parse_net(const char *s, size_t len, net_t *net) {
    const char *slash = memchr(s, '/', len);
    size_t addr_len = slash ? (size_t)(slash - s) : len;
    bool v4;
    if (!parse_addr(s, addr_len, net->bytes, &v4)) return false;
    int max = v4 ? 32 : 128, bits = max;
    if (slash) {
        const char *p = slash + 1, *end = s + len;
        if (p == end || end - p > 3) return false;
        for (bits = 0; p < end; p++) {
            if (*p < '0' || *p > '9') return false;
            bits = bits * 10 + (*p - '0');
        }
        if (bits > max) return false;
    }
    net->bits = v4 ? bits + 96 : bits;
    return true;
}

static bool contains(const net_t *net, const uint8_t addr[16]) {
    int full = net->bits / 8, rest = net->bits % 8;
    if (memcmp(net->bytes, addr, full) != 0) return false;
    if (rest == 0) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (net->bytes[full] & mask) == (addr[full] & mask);
}

static bool any(const nets_t *nets, const uint8_t addr[16]) {
    for (size_t i = 0; i < nets->len; i++)
        if (contains(&nets->nets[i], addr)) return true;
    return false;
}

// Just enough JSON for this configuration: an object whose values are
// lists of strings. `why` gets a message on failure.
typedef struct {
    const char *at, *end;
    char why[160];
} json_t;

static void skip_space(json_t *j) {
    while (j->at < j->end && (*j->at == ' ' || *j->at == '\n' || *j->at == '\t' || *j->at == '\r')) j->at++;
}

static bool expect(json_t *j, char c) {
    skip_space(j);
    if (j->at < j->end && *j->at == c) {
        j->at++;
        return true;
    }
    snprintf(j->why, sizeof j->why, "expected '%c' in the configuration", c);
    return false;
}

// A string without escapes (none of this configuration's values need them).
static bool string(json_t *j, const char **s, size_t *len) {
    if (!expect(j, '"')) return false;
    *s = j->at;
    while (j->at < j->end && *j->at != '"') {
        if (*j->at == '\\') {
            snprintf(j->why, sizeof j->why, "escapes are not supported in strings");
            return false;
        }
        j->at++;
    }
    *len = (size_t)(j->at - *s);
    return expect(j, '"');
}

static bool nets(json_t *j, const char *key, nets_t *out) {
    if (!expect(j, '[')) return false;
    skip_space(j);
    if (j->at < j->end && *j->at == ']') return ++j->at, true;
    do {
        const char *s;
        size_t len;
        if (!string(j, &s, &len)) return false;
        out->nets = realloc(out->nets, (out->len + 1) * sizeof(net_t));
        if (!parse_net(s, len, &out->nets[out->len])) {
            snprintf(j->why, sizeof j->why, "%s: `%.*s` is not an address or CIDR block", key, (int)len, s);
            return false;
        }
        out->len++;
        skip_space(j);
    } while (j->at < j->end && *j->at == ',' && j->at++);
    return expect(j, ']');
}

static bool configure(json_t *j) {
    if (!expect(j, '{')) return false;
    skip_space(j);
    if (j->at < j->end && *j->at == '}') return true;
    do {
        const char *key;
        size_t len;
        if (!string(j, &key, &len) || !expect(j, ':')) return false;
        if (len == 5 && memcmp(key, "allow", 5) == 0) {
            if (!nets(j, "allow", &allow)) return false;
        } else if (len == 4 && memcmp(key, "deny", 4) == 0) {
            if (!nets(j, "deny", &deny)) return false;
        } else {
            snprintf(j->why, sizeof j->why, "unknown key `%.*s` (allow, deny)", (int)len, key);
            return false;
        }
        skip_space(j);
    } while (j->at < j->end && *j->at == ',' && j->at++);
    return expect(j, '}');
}

bool exports_sluice_filter_http_filter_init(general_filter_string_t *config, general_filter_string_t *err) {
    json_t j = {(const char *)config->ptr, (const char *)config->ptr + config->len, ""};
    bool ok = configure(&j);
    general_filter_string_free(config);
    if (!ok) general_filter_string_dup(err, j.why);
    return ok;
}

static void forbid(exports_sluice_filter_http_filter_verdict_t *ret) {
    static const char body[] = "forbidden\n";
    general_filter_tuple2_string_string_t *headers = malloc(sizeof *headers);
    general_filter_string_dup(&headers->f0, "content-type");
    general_filter_string_dup(&headers->f1, "text/plain");
    uint8_t *bytes = malloc(sizeof body - 1);
    memcpy(bytes, body, sizeof body - 1);
    ret->tag = EXPORTS_SLUICE_FILTER_HTTP_FILTER_VERDICT_RESPOND;
    ret->val.respond = (sluice_filter_types_reply_t){
        .status = 403,
        .headers = {headers, 1},
        .body = {bytes, sizeof body - 1},
    };
}

void exports_sluice_filter_http_filter_on_request(exports_sluice_filter_http_filter_borrow_request_t req,
                                                  exports_sluice_filter_http_filter_verdict_t *ret) {
    general_filter_string_t ip;
    sluice_filter_types_method_request_client_ip(req, &ip);
    uint8_t addr[16];
    bool v4;
    bool known = parse_addr((const char *)ip.ptr, ip.len, addr, &v4);
    general_filter_string_free(&ip);
    bool allowed = known && !any(&deny, addr) && (allow.len == 0 || any(&allow, addr));
    if (allowed)
        ret->tag = EXPORTS_SLUICE_FILTER_HTTP_FILTER_VERDICT_FORWARD;
    else
        forbid(ret);
    // A borrowed handle must be given back before the call returns.
    sluice_filter_types_request_drop_borrow(req);
}

exports_sluice_filter_http_filter_response_phase_t exports_sluice_filter_http_filter_on_response(
    exports_sluice_filter_http_filter_borrow_request_t req, exports_sluice_filter_http_filter_borrow_response_t resp) {
    sluice_filter_types_request_drop_borrow(req);
    sluice_filter_types_response_drop_borrow(resp);
    // Tells the host not to call it on responses.
    return SLUICE_FILTER_TYPES_RESPONSE_PHASE_UNUSED;
}
