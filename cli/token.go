package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/auth"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/token"
)

// loadToken reads the agent's token from --token-file or RBEE_TOKEN and
// checks its form (not its MAC: only a queen can). The token never goes in
// an error message.
func (c *common) loadToken() error {
	tok := os.Getenv("RBEE_TOKEN")
	if c.tokenFile != "" {
		data, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return usagef("--token-file: %v", err)
		}
		tok = string(data)
	}
	tok = strings.TrimSpace(tok)
	if tok == "" {
		return nil
	}
	if _, err := token.Parse(tok); err != nil {
		return usagef("the rbee token (--token-file or RBEE_TOKEN) is not one: %v", err)
	}
	c.token = tok
	return nil
}

// workerToken turns a hive token into the token of worker workerID of that
// hive: the hive hands its workers their credentials without asking a queen.
// Any other token is returned as it is.
func workerToken(tok, hiveID, workerID string) (string, error) {
	c, err := token.Parse(tok)
	if err != nil || c.Role != token.RoleHive {
		return tok, nil
	}
	if c.Hive != hiveID {
		return "", usagef("the rbee token is hive %s's, not --hive-id %s's", c.Hive, hiveID)
	}
	return token.Derive(tok, workerID)
}

// checkTokenFor returns a usage error if tok is a hive's or worker's token
// of another identity than hiveID (and workerID, for a worker): the broker
// would refuse every beat.
func checkTokenFor(tok, hiveID, workerID string) error {
	c, err := token.Parse(tok)
	if err != nil || tok == "" {
		return nil
	}
	switch {
	case c.Role == token.RoleHive && c.Hive != hiveID:
		return usagef("the rbee token is hive %s's, not --hive-id %s's", c.Hive, hiveID)
	case c.Role == token.RoleWorker && (c.Hive != hiveID || (workerID != "" && c.Worker != workerID)):
		return usagef("the rbee token is worker %s.%s's, not %s.%s's", c.Hive, c.Worker, hiveID, workerID)
	case c.Role == token.RoleWorker && workerID == "":
		return usagef("a worker's token cannot run a hive")
	}
	return nil
}

// secretPath returns where a queen with data directory dir keeps its secret.
func secretPath(dir string) string { return filepath.Join(dir, token.SecretFile) }

func runToken(e *env, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		var c common
		flags := newFlagSet(e, "token")
		c.register(flags, DefaultURL)
		flags.String("data", "rbee-data", "the queen's data directory, which holds its secret ("+token.SecretFile+")")
		flags.Usage()
		if len(args) == 0 {
			return usagef("want hive ID, worker HIVE.WORKER, viewer NAME, revoke hive|viewer ID, or server-config")
		}
		return nil
	}
	sub, rest := args[0], args[1:]
	var kind, id string
	switch sub {
	case "hive", "viewer", "worker":
		kind = sub
	case "revoke":
		if len(rest) < 1 || (rest[0] != "hive" && rest[0] != "viewer") {
			return usagef("want: rbee token revoke hive ID | viewer NAME")
		}
		kind, rest = rest[0], rest[1:]
	case "server-config":
	default:
		return usagef("unknown token command %q: want hive, worker, viewer, revoke or server-config", sub)
	}
	if sub != "server-config" {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			return usagef("rbee token %s: want an ID", strings.Join(args[:len(args)-len(rest)], " "))
		}
		id, rest = rest[0], rest[1:]
	}
	var c common
	flags := newFlagSet(e, "token")
	c.register(flags, DefaultURL)
	data := flags.String("data", "rbee-data", "the queen's data directory, which holds its secret ("+token.SecretFile+")")
	if err := c.parse(flags, rest); err != nil {
		return err
	}
	if sub == "worker" {
		hiveID, workerID, err := subjects.ParseWorkerKey(id)
		if err != nil {
			return usagef("rbee token worker %q: want HIVE.WORKER", id)
		}
		if c.token == "" {
			return usagef("rbee token worker needs the hive's token (--token-file or RBEE_TOKEN)")
		}
		tok, err := workerToken(c.token, hiveID, workerID)
		if err != nil {
			return err
		}
		if tok == c.token {
			return usagef("rbee token worker needs a hive token, not a worker's or viewer's")
		}
		fmt.Fprintln(e.stdout, tok)
		return nil
	}
	secret, err := token.LoadSecret(secretPath(*data))
	if errors.Is(err, fs.ErrNotExist) {
		return usagef("no queen secret in %s: run rbee token on the queen's machine, with the queen's --data", *data)
	}
	if err != nil {
		return err
	}
	switch sub {
	case "server-config":
		b, err := auth.Broker(secret)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "# nats-server authorization for rbee's auth callout; holds the queens' password (keep it private)\n%s", b.ServerConfig())
		return nil
	case "revoke":
		return revoke(e, &c, secret, kind+"."+id)
	}
	var tok string
	if kind == "hive" {
		tok, err = secret.Hive(id, time.Now())
	} else {
		tok, err = secret.Viewer(id, time.Now())
	}
	if err != nil {
		return usageError{err.Error()}
	}
	fmt.Fprintln(e.stdout, tok)
	if kind == "hive" {
		fmt.Fprintf(e.stderr, "rbee token: keep it in a file only the hive reads (mode 0600) and start the hive with\n"+
			"  rbee hive --hive-id %s --token-file FILE   (or RBEE_TOKEN=...)\n"+
			"its workers take the same file: each derives its own token from it\n", id)
	}
	return nil
}

// revoke records the revocation in the queens' bucket, connecting as the
// queens' own user unless other credentials are given.
func revoke(e *env, c *common, secret token.Secret, subject string) error {
	if c.creds == "" && c.nkey == "" && c.token == "" {
		b, err := auth.Broker(secret)
		if err != nil {
			return err
		}
		c.user, c.password = b.User, b.Password
	}
	nc, err := dial(c.connConfig("rbee-token", nil))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	at := time.Now()
	if err := auth.Revoke(ctx, js, c.prefix, subject, at); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "revoked %s at %s: every queen refuses its tokens issued until then and ends their connections\n", subject, at.UTC().Format(time.RFC3339Nano))
	return nil
}
