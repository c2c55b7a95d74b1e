/*
 * rbee-c-subscriber: an external rbee subscriber in C, written from
 * docs/wire.md alone with Debian's libnats-dev (nats.c) and libmsgpack-dev
 * (msgpack-c). It prints one line per heartbeat, registry change and
 * registry event:
 *
 *   ready
 *   beat worker h1.w1 seq=12 status=ready health=healthy
 *   beat hive h1 seq=4 health=healthy gpus=8 workers=3
 *   beat queen queen-1 seq=9 state=ok
 *   kv PUT rbee_workers h1.w1 liveness=alive
 *   kv DEL rbee_workers h1.w1 left
 *   kv PURGE rbee_workers h1.w2 expired reason=MaxAge
 *   event joined h1.w1
 *   error <what> <why>
 *
 * nats.c's KV API shows an expiry as a PUT with an empty value and gives no
 * access to headers, so the registry is read from the buckets' streams
 * instead ($KV.rbee_workers.>, $KV.rbee_hives.>) with an ordered JetStream
 * consumer: a KV-Operation header says DEL or PURGE, and a marker the server
 * wrote when a key's TTL ran out carries Nats-Marker-Reason.
 *
 * Build: cc -O2 -Wall -o rbee-c-subscriber subscriber.c $(pkg-config --cflags --libs libnats msgpack) -lpthread
 * Run:   ./rbee-c-subscriber [--nats-url nats://127.0.0.1:4222] [--prefix rbee]
 */
#include <nats/nats.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PAYLOAD 262144 /* bytes; larger beats are refused (docs/wire.md) */
#define MAX_KEYS 65536     /* keys remembered per bucket, for DEL then PURGE */

static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

/* say prints one line, whole, from any callback thread. */
static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&out_mu);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

/* safe copies s (n bytes) into dst, escaping everything but printable ASCII:
 * a payload string never reaches the terminal raw. */
static const char *safe(char *dst, size_t cap, const char *s, size_t n) {
    size_t j = 0;
    for (size_t i = 0; i < n && j + 5 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            dst[j++] = (char)c;
        } else {
            j += (size_t)snprintf(dst + j, cap - j, "\\x%02x", c);
        }
    }
    dst[j] = '\0';
    return dst;
}

/* field returns the value of key in a msgpack map, or NULL. */
static const msgpack_object *field(const msgpack_object *m, const char *key) {
    size_t kl = strlen(key);
    if (m->type != MSGPACK_OBJECT_MAP) return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == kl && memcmp(k->via.str.ptr, key, kl) == 0)
            return &m->via.map.ptr[i].val;
    }
    return NULL;
}

/* str writes the string value of key (escaped) into dst; def if absent. */
static const char *str(char *dst, size_t cap, const msgpack_object *m, const char *key, const char *def) {
    const msgpack_object *v = field(m, key);
    if (v == NULL || v->type != MSGPACK_OBJECT_STR) {
        snprintf(dst, cap, "%s", def);
        return dst;
    }
    return safe(dst, cap, v->via.str.ptr, v->via.str.size);
}

static unsigned long long uint_of(const msgpack_object *m, const char *key) {
    const msgpack_object *v = field(m, key);
    return v != NULL && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (unsigned long long)v->via.u64 : 0;
}

static unsigned arr_len(const msgpack_object *m, const char *key) {
    const msgpack_object *v = field(m, key);
    return v != NULL && v->type == MSGPACK_OBJECT_ARRAY ? v->via.array.size : 0;
}

/* decode unpacks data as one msgpack map of schema version 1. It returns 0
 * and fills res, or -1 with why set. */
static int decode(msgpack_unpacked *res, const char *data, int n, const char **why) {
    size_t off = 0;
    if (n <= 0 || n > MAX_PAYLOAD) {
        *why = n <= 0 ? "undecodable: empty" : "oversize";
        return -1;
    }
    if (msgpack_unpack_next(res, data, (size_t)n, &off) != MSGPACK_UNPACK_SUCCESS || off != (size_t)n) {
        *why = "undecodable";
        return -1;
    }
    if (res->data.type != MSGPACK_OBJECT_MAP) {
        *why = "undecodable: not a msgpack map";
        return -1;
    }
    if (uint_of(&res->data, "v") != 1) {
        *why = "unknown_schema: v is not 1";
        return -1;
    }
    return 0;
}

static const char *header(natsMsg *msg, const char *name) {
    const char *v = NULL;
    if (natsMsgHeader_Get(msg, name, &v) != NATS_OK) return NULL;
    return v;
}

static char prefix[33] = "rbee";

/* onBeat prints a heartbeat from <prefix>.hb.<kind>.<ids>. */
static void onBeat(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc, (void)sub, (void)closure;
    char subj[300], a[200], b[200], c[200];
    safe(subj, sizeof subj, natsMsg_GetSubject(msg), strlen(natsMsg_GetSubject(msg)));
    const char *ct = header(msg, "Content-Type"), *schema = header(msg, "Rbee-Schema");
    if (ct == NULL || strcmp(ct, "application/msgpack") != 0 || schema == NULL) {
        say("error beat %s bad_headers", subj);
        natsMsg_Destroy(msg);
        return;
    }
    const char *rest = subj + strlen(prefix) + 4; /* after "<prefix>.hb." */
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    const char *why = NULL;
    if (decode(&res, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), &why) != 0) {
        say("error beat %s %s", subj, why);
    } else if (strncmp(rest, "worker.", 7) == 0 && strcmp(schema, "worker/1") == 0) {
        say("beat worker %s seq=%llu status=%s health=%s%s", rest + 7, uint_of(&res.data, "seq"),
            str(a, sizeof a, &res.data, "status", "-"), str(b, sizeof b, &res.data, "health", "-"),
            header(msg, "Rbee-Event") ? " goodbye" : "");
    } else if (strncmp(rest, "hive.", 5) == 0 && strcmp(schema, "hive/1") == 0) {
        say("beat hive %s seq=%llu health=%s gpus=%u workers=%u%s", rest + 5, uint_of(&res.data, "seq"),
            str(a, sizeof a, &res.data, "health", "-"), arr_len(&res.data, "gpus"), arr_len(&res.data, "workers"),
            header(msg, "Rbee-Event") ? " goodbye" : "");
    } else if (strncmp(rest, "queen.", 6) == 0 && strcmp(schema, "queen/1") == 0) {
        say("beat queen %s seq=%llu state=%s", rest + 6, uint_of(&res.data, "seq"), str(c, sizeof c, &res.data, "state", "-"));
    } else {
        say("error beat %s unknown_schema", subj);
    }
    msgpack_unpacked_destroy(&res);
    natsMsg_Destroy(msg);
}

/* onEvent prints a registry event from <prefix>.evt.<event>.<hive>[.<worker>]. */
static void onEvent(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc, (void)sub, (void)closure;
    char subj[300], ev[80], key[200];
    safe(subj, sizeof subj, natsMsg_GetSubject(msg), strlen(natsMsg_GetSubject(msg)));
    const char *schema = header(msg, "Rbee-Schema");
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    const char *why = NULL;
    if (schema == NULL || strcmp(schema, "event/1") != 0) {
        say("error event %s unknown_schema", subj);
    } else if (decode(&res, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), &why) != 0) {
        say("error event %s %s", subj, why);
    } else {
        say("event %s %s", str(ev, sizeof ev, &res.data, "event", "-"), str(key, sizeof key, &res.data, "key", "-"));
    }
    msgpack_unpacked_destroy(&res);
    natsMsg_Destroy(msg);
}

/* bucket is one registry bucket read through its stream. left remembers the
 * keys whose last change was a DEL: the delete marker ages out of the bucket
 * after its age limit (rbee queen --max-ttl, default 1 h) as a PURGE, which is
 * not an expiry. */
struct bucket {
    char name[64];
    char subject[80];
    pthread_mutex_t mu;
    char *left[MAX_KEYS];
    int nleft;
};

static int take_left(struct bucket *b, const char *key, int set) {
    int found = 0;
    pthread_mutex_lock(&b->mu);
    for (int i = 0; i < b->nleft; i++) {
        if (strcmp(b->left[i], key) == 0) {
            found = 1;
            if (!set) {
                free(b->left[i]);
                b->left[i] = b->left[--b->nleft];
            }
            break;
        }
    }
    if (set && !found && b->nleft < MAX_KEYS) b->left[b->nleft++] = strdup(key);
    pthread_mutex_unlock(&b->mu);
    return found;
}

static void onEntry(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
    (void)nc, (void)sub;
    struct bucket *b = closure;
    const char *subject = natsMsg_GetSubject(msg);
    char key[200], live[64];
    size_t pl = strlen(b->subject) - 1; /* "$KV.<bucket>." */
    safe(key, sizeof key, subject + pl, strlen(subject) - pl);
    const char *op = header(msg, "KV-Operation");
    const char *marker = header(msg, "Nats-Marker-Reason");
    if (op != NULL && strcmp(op, "DEL") == 0) {
        take_left(b, key, 1);
        say("kv DEL %s %s left", b->name, key);
    } else if ((op != NULL && strcmp(op, "PURGE") == 0) || marker != NULL) {
        int was_left = take_left(b, key, 0);
        char r[64];
        say("kv PURGE %s %s %s reason=%s", b->name, key, was_left ? "left" : "expired",
            marker ? safe(r, sizeof r, marker, strlen(marker)) : "purge");
    } else {
        msgpack_unpacked res;
        msgpack_unpacked_init(&res);
        const char *why = NULL;
        take_left(b, key, 0);
        if (decode(&res, natsMsg_GetData(msg), natsMsg_GetDataLength(msg), &why) != 0) {
            say("error kv %s %s %s", b->name, key, why);
        } else {
            /* The queen's judgement beyond the TTL; absent means alive. */
            say("kv PUT %s %s liveness=%s", b->name, key, str(live, sizeof live, &res.data, "liveness", "alive"));
        }
        msgpack_unpacked_destroy(&res);
    }
    natsMsg_Destroy(msg);
}

/* watch follows a bucket's stream from the last value of every key,
 * retrying while the bucket does not exist yet (the queen creates it). */
static natsSubscription *watch(natsConnection *nc, jsCtx *js, struct bucket *b) {
    for (int announced = 0;;) {
        natsSubscription *sub = NULL;
        jsSubOptions so;
        jsErrCode jerr = 0;
        jsSubOptions_Init(&so);
        so.Ordered = true;
        so.Config.DeliverPolicy = js_DeliverLastPerSubject;
        natsStatus s = js_Subscribe(&sub, js, b->subject, onEntry, b, NULL, &so, &jerr);
        if (s == NATS_OK) return sub;
        if (!announced) {
            say("waiting %s %s", b->name, natsStatus_GetText(s));
            announced = 1;
        }
        if (natsConnection_IsClosed(nc)) return NULL;
        nats_Sleep(1000);
    }
}

int main(int argc, char **argv) {
    const char *url = getenv("NATS_URL") ? getenv("NATS_URL") : "nats://127.0.0.1:4222";
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nats-url") == 0 && i + 1 < argc) {
            url = argv[++i];
        } else if (strcmp(argv[i], "--prefix") == 0 && i + 1 < argc && strlen(argv[i + 1]) < sizeof prefix) {
            snprintf(prefix, sizeof prefix, "%s", argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--nats-url URL] [--prefix rbee]\n", argv[0]);
            return 2;
        }
    }
    /* Signals go to sigwait below, not to the library's threads. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    natsSubscription *beats = NULL, *evs = NULL, *wsub = NULL, *hsub = NULL;
    natsStatus s = natsConnection_ConnectTo(&nc, url);
    if (s != NATS_OK) {
        fprintf(stderr, "rbee-c-subscriber: connect %s: %s\n", url, natsStatus_GetText(s));
        return 1;
    }
    char subj[80];
    snprintf(subj, sizeof subj, "%s.hb.>", prefix);
    s = natsConnection_Subscribe(&beats, nc, subj, onBeat, NULL);
    snprintf(subj, sizeof subj, "%s.evt.>", prefix);
    if (s == NATS_OK) s = natsConnection_Subscribe(&evs, nc, subj, onEvent, NULL);
    if (s == NATS_OK) s = natsConnection_JetStream(&js, nc, NULL);
    if (s != NATS_OK) {
        fprintf(stderr, "rbee-c-subscriber: subscribe: %s\n", natsStatus_GetText(s));
        return 1;
    }
    static struct bucket workers, hives;
    snprintf(workers.name, sizeof workers.name, "%s_workers", prefix);
    snprintf(hives.name, sizeof hives.name, "%s_hives", prefix);
    snprintf(workers.subject, sizeof workers.subject, "$KV.%s.>", workers.name);
    snprintf(hives.subject, sizeof hives.subject, "$KV.%s.>", hives.name);
    pthread_mutex_init(&workers.mu, NULL);
    pthread_mutex_init(&hives.mu, NULL);
    wsub = watch(nc, js, &workers);
    hsub = watch(nc, js, &hives);
    if (wsub == NULL || hsub == NULL) return 1;
    natsConnection_Flush(nc);
    say("ready");

    int sig;
    sigwait(&sigs, &sig);
    natsSubscription_Unsubscribe(wsub);
    natsSubscription_Unsubscribe(hsub);
    natsSubscription_Destroy(wsub);
    natsSubscription_Destroy(hsub);
    natsSubscription_Destroy(beats);
    natsSubscription_Destroy(evs);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    nats_Close();
    return 0;
}
