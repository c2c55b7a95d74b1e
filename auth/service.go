package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/token"
)

// CalloutSubject is where nats-server asks its callout to authorize a
// connection.
const CalloutSubject = "$SYS.REQ.USER.AUTH"

// Refusal reasons, as counted in Stats.Refused and rbee_auth_refused_total.
const (
	ReasonNoToken   = "no_token"
	ReasonMalformed = "malformed"
	ReasonForged    = "forged"
	ReasonRevoked   = "revoked"
	ReasonBadReq    = "bad_request"
)

// Reasons lists every refusal reason.
var Reasons = []string{ReasonNoToken, ReasonMalformed, ReasonForged, ReasonRevoked, ReasonBadReq}

// TokenUser is the user name with which a client that cannot send an auth
// token (some tools) sends its rbee token as the password instead.
const TokenUser = "rbee"

// KickFunc ends the live connections whose broker user name match accepts
// and returns how many it ended. It may be called concurrently.
type KickFunc func(ctx context.Context, match func(user string) bool) (int, error)

// Config configures a Service.
type Config struct {
	// Secret verifies tokens and signs the callout's answers.
	Secret token.Secret
	// Prefix is the subject and bucket prefix (subjects.DefaultPrefix).
	Prefix string
	// Account is the account admitted clients are placed in; nats-server's
	// global account "$G" unless the server's configuration names others.
	Account string
	// Callout subscribes to CalloutSubject and answers the server. Without
	// it the Service only checks tokens for Check (the HTTP API) and kicks.
	Callout bool
	// Queue is the queue group the queens answer the callout in.
	Queue string
	// Replicas is the revocation bucket's replica count.
	Replicas int
	// Kick ends revoked identities' live connections; nil ends none (they
	// are refused at their next connect only).
	Kick KickFunc
	// Logger receives refusals and revocations; nil discards.
	Logger *slog.Logger
	// StartTimeout bounds the reading of the revocation list at Start.
	StartTimeout time.Duration
}

// DefaultConfig returns a Config for secret with the default prefix, the
// global account, and the callout on.
func DefaultConfig(s token.Secret) Config {
	return Config{
		Secret: s, Prefix: subjects.DefaultPrefix, Account: "$G", Callout: true, Queue: "rbee-auth",
		Replicas: 1, StartTimeout: 10 * time.Second,
	}
}

// Validate returns an error wrapping ErrInvalidConfig.
func (c Config) Validate() error {
	if _, err := subjects.New(c.Prefix); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	switch {
	case c.Account == "":
		return fmt.Errorf("%w: no account", ErrInvalidConfig)
	case c.Callout && c.Queue == "":
		return fmt.Errorf("%w: no queue group", ErrInvalidConfig)
	case c.Replicas < 1:
		return fmt.Errorf("%w: replicas %d", ErrInvalidConfig, c.Replicas)
	case c.StartTimeout <= 0:
		return fmt.Errorf("%w: StartTimeout must be positive", ErrInvalidConfig)
	}
	return nil
}

// RevocationBucket returns the name of the KV bucket that holds the
// revocations under prefix: key "hive.<id>" or "viewer.<name>", value the
// revocation time in Unix milliseconds.
func RevocationBucket(prefix string) string { return prefix + "_revoked" }

// Stats counts the Service's decisions.
type Stats struct {
	// Authorized counts admitted connections by role.
	Authorized map[string]uint64
	// Refused counts refused connections and HTTP requests by reason.
	Refused map[string]uint64
	// Kicked counts live connections ended by revocations.
	Kicked uint64
}

// Service answers the auth callout. Its methods may be called concurrently;
// Start and Stop follow the lifecycle contract (Stop before Start or twice
// is safe).
type Service struct {
	nc     *nats.Conn
	cfg    Config
	scheme subjects.Scheme
	kp     nkeys.KeyPair
	log    *slog.Logger

	mu      sync.RWMutex
	revoked map[string]int64 // revocation subject -> Unix ms
	lastLog map[string]time.Time
	quiet   map[string]uint64
	ready   bool
	started bool
	stats   Stats

	cancel context.CancelFunc
	wg     sync.WaitGroup
	sub    *nats.Subscription
	w      jetstream.KeyWatcher

	authorized *prometheus.CounterVec
	refused    *prometheus.CounterVec
	kicked     prometheus.Counter
}

// New returns a Service answering on nc, or an error wrapping
// ErrInvalidConfig.
func New(nc *nats.Conn, c Config) (*Service, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	kp, err := issuer(c.Secret)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		nc: nc, cfg: c, kp: kp, log: log.With("component", "auth"), revoked: map[string]int64{},
		lastLog: map[string]time.Time{}, quiet: map[string]uint64{},
		stats: Stats{Authorized: map[string]uint64{}, Refused: map[string]uint64{}},
		authorized: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_auth_authorized_total",
			Help: "Connections the auth callout admitted, by role."}, []string{"role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "rbee_auth_refused_total",
			Help: "Connections and HTTP requests refused for their token, by reason."}, []string{"reason"}),
		kicked: prometheus.NewCounter(prometheus.CounterOpts{Name: "rbee_auth_kicked_total",
			Help: "Live connections ended because their identity was revoked."}),
	}
	s.scheme, _ = subjects.New(c.Prefix)
	for _, r := range Reasons {
		s.refused.WithLabelValues(r)
	}
	return s, nil
}

// Collector returns the Service's metrics.
func (s *Service) Collector() prometheus.Collector {
	return collectors{s.authorized, s.refused, s.kicked}
}

type collectors []prometheus.Collector

func (c collectors) Describe(ch chan<- *prometheus.Desc) {
	for _, x := range c {
		x.Describe(ch)
	}
}

func (c collectors) Collect(ch chan<- prometheus.Metric) {
	for _, x := range c {
		x.Collect(ch)
	}
}

// Stats returns a copy of the counts.
func (s *Service) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st := Stats{Authorized: map[string]uint64{}, Refused: map[string]uint64{}, Kicked: s.stats.Kicked}
	for k, v := range s.stats.Authorized {
		st.Authorized[k] = v
	}
	for k, v := range s.stats.Refused {
		st.Refused[k] = v
	}
	return st
}

// Start creates the revocation bucket if needed, reads it, keeps watching
// it, and (with Config.Callout) subscribes to the callout. It returns once
// the revocations known at start are in force, or the error; a second call
// returns ErrAlreadyStarted.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return ErrAlreadyStarted
	}
	s.started = true
	s.mu.Unlock()
	js, err := jetstream.New(s.nc)
	if err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	// JetStream may not answer yet (a cluster electing its leader): retried
	// until StartTimeout.
	var kv jetstream.KeyValue
	for {
		kv, err = js.CreateOrUpdateKeyValue(sctx, jetstream.KeyValueConfig{
			Bucket: RevocationBucket(s.cfg.Prefix), Description: "rbee revoked identities", History: 1, Replicas: s.cfg.Replicas,
		})
		if err == nil {
			break
		}
		select {
		case <-sctx.Done():
			return fmt.Errorf("revocation bucket: %w", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
	rctx, rcancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(rctx)
	if err != nil {
		rcancel()
		return fmt.Errorf("revocation watch: %w", err)
	}
	// The revocations that exist now are in force before the first answer.
	for initial := true; initial; {
		select {
		case e := <-w.Updates():
			if e == nil {
				initial = false
				break
			}
			s.apply(rctx, e, false)
		case <-sctx.Done():
			_ = w.Stop()
			rcancel()
			return fmt.Errorf("revocation list: %w", sctx.Err())
		}
	}
	s.mu.Lock()
	s.ready, s.w, s.cancel = true, w, rcancel
	n := len(s.revoked)
	s.mu.Unlock()
	if n > 0 {
		// Connections a revocation covers that are still open (a revocation
		// made while no queen ran): one pass for all of them.
		s.kick(rctx, func(subject string, issued int64) bool {
			at, ok := s.revokedAt(subject)
			return ok && issued <= at
		})
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					s.apply(rctx, e, true)
				}
			case <-rctx.Done():
				return
			}
		}
	}()
	if s.cfg.Callout {
		sub, err := s.nc.QueueSubscribe(CalloutSubject, s.cfg.Queue, s.handle)
		if err != nil {
			s.Stop()
			return fmt.Errorf("callout subscription: %w", err)
		}
		s.mu.Lock()
		s.sub = sub
		s.mu.Unlock()
		if err := s.nc.FlushWithContext(sctx); err != nil {
			s.Stop()
			return fmt.Errorf("callout subscription: %w", err)
		}
	}
	return nil
}

// Stop ends the callout subscription and the revocation watch.
func (s *Service) Stop() {
	s.mu.Lock()
	sub, w, cancel := s.sub, s.w, s.cancel
	s.sub, s.w, s.cancel = nil, nil, nil
	s.mu.Unlock()
	if sub != nil {
		_ = sub.Unsubscribe()
	}
	if w != nil {
		_ = w.Stop()
	}
	if cancel != nil {
		cancel()
	}
	s.wg.Wait()
}

// apply records one revocation and, with kick, ends the live connections
// it covers.
func (s *Service) apply(ctx context.Context, e jetstream.KeyValueEntry, kick bool) {
	key := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		s.mu.Lock()
		delete(s.revoked, key)
		s.mu.Unlock()
		return
	}
	at, err := strconv.ParseInt(string(e.Value()), 10, 64)
	if err != nil {
		s.log.Warn("unreadable revocation ignored", "key", key, "err", err)
		return
	}
	s.mu.Lock()
	s.revoked[key] = at
	s.mu.Unlock()
	if !kick {
		return
	}
	s.log.Info("identity revoked", "identity", key, "at", time.UnixMilli(at).UTC())
	s.kick(ctx, func(subject string, issued int64) bool { return subject == key && issued <= at })
}

// kick ends the live connections whose identity covered accepts.
func (s *Service) kick(ctx context.Context, covered func(subject string, issued int64) bool) {
	if s.cfg.Kick == nil {
		return
	}
	n, err := s.cfg.Kick(ctx, func(user string) bool {
		subject, issued, ok := parseUser(user)
		return ok && covered(subject, issued)
	})
	s.mu.Lock()
	s.stats.Kicked += uint64(n)
	s.mu.Unlock()
	s.kicked.Add(float64(n))
	if err != nil {
		s.log.Warn("revoked connections not all ended", "ended", n, "err", err)
	} else if n > 0 {
		s.log.Info("revoked connections ended", "ended", n)
	}
}

// revokedAt returns when subject was revoked, if it was.
func (s *Service) revokedAt(subject string) (int64, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	at, ok := s.revoked[subject]
	return at, ok
}

// userName is the broker user name of an admitted identity: its identity
// and its token's issue time, e.g. "hive:gpu-node-1@1780000000123". It holds
// no secret, and lets a revocation end exactly the connections it covers.
func userName(c token.Claims) string {
	return c.Identity() + "@" + strconv.FormatInt(c.Issued.UnixMilli(), 10)
}

// parseUser returns the revocation subject and issue time of a user name
// made by userName.
func parseUser(user string) (subject string, issued int64, ok bool) {
	ident, at, ok := strings.Cut(user, "@")
	if !ok {
		return "", 0, false
	}
	role, id, ok := strings.Cut(ident, ":")
	if !ok {
		return "", 0, false
	}
	issued, err := strconv.ParseInt(at, 10, 64)
	if err != nil {
		return "", 0, false
	}
	switch token.Role(role) {
	case token.RoleHive:
		return "hive." + id, issued, true
	case token.RoleWorker:
		h, _, _ := strings.Cut(id, ".")
		return "hive." + h, issued, true
	case token.RoleViewer:
		return "viewer." + id, issued, true
	}
	return "", 0, false
}

func (s *Service) refuse(reason string) {
	s.mu.Lock()
	s.stats.Refused[reason]++
	s.mu.Unlock()
	s.refused.WithLabelValues(reason).Inc()
}

// Check returns the claims of tok if it verifies under the secret and is not
// revoked; else an error wrapping token.ErrMalformed, token.ErrForged,
// ErrRevoked or ErrNotStarted. A refusal is counted.
func (s *Service) Check(tok string) (token.Claims, error) {
	c, err := s.check(tok)
	if err != nil {
		s.refuse(reason(err))
	}
	return c, err
}

func (s *Service) check(tok string) (token.Claims, error) {
	if strings.TrimSpace(tok) == "" {
		return token.Claims{}, errNoToken
	}
	c, err := s.cfg.Secret.Verify(tok)
	if err != nil {
		return c, err
	}
	s.mu.RLock()
	at, revoked := s.revoked[c.Subject()]
	ready := s.ready
	s.mu.RUnlock()
	if !ready {
		return c, ErrNotStarted
	}
	if revoked && c.Issued.UnixMilli() <= at {
		return c, fmt.Errorf("%w: %s", ErrRevoked, c.Identity())
	}
	return c, nil
}

// refusalLogEvery is the least time between two logged refusals of one
// reason; the ones between are counted (rbee_auth_refused_total) and their
// number logged with the next.
const refusalLogEvery = time.Second

// logRefusal reports whether a refusal for reason is logged now, and how
// many were not since the last that was.
func (s *Service) logRefusal(reason string) (suppressed uint64, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Sub(s.lastLog[reason]) < refusalLogEvery {
		s.quiet[reason]++
		return 0, false
	}
	s.lastLog[reason], suppressed = now, s.quiet[reason]
	s.quiet[reason] = 0
	return suppressed, true
}

// errNoToken is a check of an empty token: malformed, counted apart.
var errNoToken = fmt.Errorf("%w: no token", token.ErrMalformed)

func reason(err error) string {
	switch {
	case errors.Is(err, errNoToken):
		return ReasonNoToken
	case errors.Is(err, ErrRevoked):
		return ReasonRevoked
	case errors.Is(err, token.ErrForged):
		return ReasonForged
	case errors.Is(err, token.ErrMalformed):
		return ReasonMalformed
	}
	return ReasonBadReq
}

// handle answers one callout request.
func (s *Service) handle(m *nats.Msg) {
	req, err := jwt.DecodeAuthorizationRequestClaims(string(m.Data))
	if err != nil {
		s.refuse(ReasonBadReq)
		s.log.Warn("unreadable auth callout request", "err", err)
		return // the server times the connection out
	}
	tok := req.ConnectOptions.Token
	if tok == "" && req.ConnectOptions.Username == TokenUser {
		tok = req.ConnectOptions.Password // clients that can only send a user and password
	}
	host, name := req.ClientInformation.Host, req.ConnectOptions.Name
	c, err := s.Check(tok)
	if err != nil {
		if suppressed, ok := s.logRefusal(reason(err)); ok {
			claimed, _ := token.Parse(tok) // for the log only: what it claims, never the token
			s.log.Warn("connection refused", "reason", reason(err), "claims", claimed.Identity(), "host", host, "name", name,
				"suppressed", suppressed)
		}
		s.respond(m, req, "", "not authorized")
		return
	}
	uc := jwt.NewUserClaims(req.UserNkey)
	uc.Name = userName(c)
	uc.Audience = s.cfg.Account
	uc.Permissions = Permissions(s.scheme, c)
	ujwt, err := uc.Encode(s.kp)
	if err != nil {
		s.log.Error("user claims not signed", "err", err)
		s.respond(m, req, "", "internal error")
		return
	}
	s.mu.Lock()
	s.stats.Authorized[string(c.Role)]++
	s.mu.Unlock()
	s.authorized.WithLabelValues(string(c.Role)).Inc()
	s.log.Debug("connection authorized", "identity", c.Identity(), "host", host, "name", name)
	s.respond(m, req, ujwt, "")
}

func (s *Service) respond(m *nats.Msg, req *jwt.AuthorizationRequestClaims, userJWT, errMsg string) {
	rc := jwt.NewAuthorizationResponseClaims(req.UserNkey)
	rc.Audience = req.Server.ID
	rc.Jwt, rc.Error = userJWT, errMsg
	out, err := rc.Encode(s.kp)
	if err != nil {
		s.log.Error("callout answer not signed", "err", err)
		return
	}
	if err := m.Respond([]byte(out)); err != nil {
		s.log.Warn("callout answer not sent", "err", err)
	}
}

// Revoke records that every token of the identity subject ("hive.<id>" or
// "viewer.<name>", see token.Claims.Subject) issued at or before at is
// revoked, creating the bucket if needed. Every queen's Service refuses them
// from then on and ends their live connections.
func Revoke(ctx context.Context, js jetstream.JetStream, prefix, subject string, at time.Time) error {
	kind, id, ok := strings.Cut(subject, ".")
	if !ok || (kind != "hive" && kind != "viewer") || !subjects.ValidID(id) {
		return fmt.Errorf("%w: revocation subject %q", ErrInvalidConfig, subject)
	}
	// The queens made the bucket with their replica count; it is created
	// here only when no queen has run yet.
	kv, err := js.KeyValue(ctx, RevocationBucket(prefix))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: RevocationBucket(prefix), Description: "rbee revoked identities", History: 1,
		})
	}
	if err != nil {
		return fmt.Errorf("revocation bucket: %w", err)
	}
	if _, err := kv.Put(ctx, subject, []byte(strconv.FormatInt(at.UnixMilli(), 10))); err != nil {
		return fmt.Errorf("revoke %s: %w", subject, err)
	}
	return nil
}
