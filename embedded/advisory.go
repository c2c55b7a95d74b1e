package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rbee/heartbeat/natsconn"
)

// Account is the account every client of the embedded broker lands in when
// no configuration file names accounts: nats-server's global account. Its
// JetStream data stays where earlier versions kept it.
const Account = server.DEFAULT_GLOBAL_ACCOUNT

// SystemAccount is the embedded broker's system account, which sends the
// connection advisories.
const SystemAccount = server.DEFAULT_SYSTEM_ACCOUNT

// AdvisorySubjects returns the subjects on which the server announces that a
// client of account connected or disconnected
// ($SYS.ACCOUNT.<account>.CONNECT and .DISCONNECT). The payloads are JSON
// advisories of type io.nats.server.advisory.v1.client_connect and
// client_disconnect; server.id and client.id in them are what nats.go's
// ConnectedServerId and GetClientID report on the client's side.
func AdvisorySubjects(account string) (connect, disconnect string) {
	return "$SYS.ACCOUNT." + account + ".CONNECT", "$SYS.ACCOUNT." + account + ".DISCONNECT"
}

// ConnID returns the connection identity "<server_id>/<client_id>" of nc, as
// heartbeats carry it in conn and as ConnAdvisory.ConnID rebuilds it from an
// advisory. It returns "" while nc is not connected.
func ConnID(nc *nats.Conn) string { return natsconn.ID(nc) }

// ConnAdvisory is the part of a client connect or disconnect advisory that
// identifies the connection.
type ConnAdvisory struct {
	Type   string `json:"type"`
	Server struct {
		Name string `json:"name"`
		ID   string `json:"id"`
	} `json:"server"`
	Client struct {
		ID      uint64 `json:"id"`
		Account string `json:"acc"`
		Name    string `json:"name"`
	} `json:"client"`
	// Reason is why the server closed the connection (disconnects only),
	// e.g. "Client Closed" or "Stale Connection".
	Reason string `json:"reason"`
}

// Advisory types of ConnAdvisory.Type.
const (
	ConnectAdvisoryType    = server.ConnectEventMsgType
	DisconnectAdvisoryType = server.DisconnectEventMsgType
)

// ParseConnAdvisory decodes a connect or disconnect advisory, or returns the
// JSON error.
func ParseConnAdvisory(data []byte) (ConnAdvisory, error) {
	var a ConnAdvisory
	err := json.Unmarshal(data, &a)
	return a, err
}

// ConnID returns the advisory's connection as "<server_id>/<client_id>".
func (a ConnAdvisory) ConnID() string { return fmt.Sprintf("%s/%d", a.Server.ID, a.Client.ID) }

// ClientAccount asks the server which account nc's user belongs to
// ($SYS.REQ.USER.INFO, answered by any nats-server with a system account).
// It returns the account name, or an error if the server did not answer
// before ctx ends (no system account) or refused.
func ClientAccount(ctx context.Context, nc *nats.Conn) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	msg, err := nc.RequestWithContext(ctx, "$SYS.REQ.USER.INFO", nil)
	if err != nil {
		return "", fmt.Errorf("user info: %w", err)
	}
	var r struct {
		Data struct {
			Account string `json:"account"`
		} `json:"data"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return "", fmt.Errorf("user info: %w", err)
	}
	if r.Error != nil {
		return "", fmt.Errorf("user info: %d %s", r.Error.Code, r.Error.Description)
	}
	if r.Data.Account == "" {
		return "", fmt.Errorf("user info: no account in %q", msg.Data)
	}
	return r.Data.Account, nil
}

// AdvisoriesReachable reports whether nc receives the connect advisories of
// account: it subscribes to the CONNECT subject, opens a second connection
// with dial, and waits for that connection's advisory until ctx ends (2 s
// when ctx has no deadline). It returns nil when the advisory came, an error
// wrapping ErrNoAdvisories when it did not (a server without the system
// account's export and the account's import, or a user not allowed to
// subscribe), or dial's or the subscription's error.
func AdvisoriesReachable(ctx context.Context, nc *nats.Conn, account string, dial func() (*nats.Conn, error)) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	connect, _ := AdvisorySubjects(account)
	ch := make(chan string, 64)
	sub, err := nc.Subscribe(connect, func(m *nats.Msg) {
		if a, err := ParseConnAdvisory(m.Data); err == nil {
			select {
			case ch <- a.ConnID():
			default:
			}
		}
	})
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", connect, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("subscribe %s: %w", connect, err)
	}
	probe, err := dial()
	if err != nil {
		return fmt.Errorf("probe connection: %w", err)
	}
	id := ConnID(probe)
	probe.Close()
	for {
		select {
		case got := <-ch:
			if got == id {
				return nil
			}
		case <-ctx.Done():
			return fmt.Errorf("%w: nothing on %s for probe connection %s", ErrNoAdvisories, connect, id)
		}
	}
}

// configureAdvisories lets the clients of the global account subscribe to
// their own account's connect and disconnect advisories: the system account
// exports the two subjects to the global account, which imports them. It
// changes nothing when the options already arrange accounts themselves (a
// configuration file with accounts, a system account, an operator, or no
// system account): then the file's author configures the import. It reports
// whether it configured them.
func configureAdvisories(opts *server.Options) (bool, error) {
	if opts.SystemAccount != "" || opts.NoSystemAccount || len(opts.TrustedOperators) > 0 || len(opts.TrustedKeys) > 0 {
		return false, nil
	}
	var gacc *server.Account
	for _, a := range opts.Accounts {
		if a.Name != Account {
			return false, nil
		}
		gacc = a // a configuration file's top-level mappings live here
	}
	if gacc == nil {
		gacc = server.NewAccount(Account)
		opts.Accounts = append(opts.Accounts, gacc)
	}
	sys := server.NewAccount(SystemAccount)
	connect, disconnect := AdvisorySubjects(Account)
	for _, subj := range []string{connect, disconnect} {
		if err := sys.AddStreamExport(subj, []*server.Account{gacc}); err != nil {
			return false, fmt.Errorf("export %s: %w", subj, err)
		}
		if err := gacc.AddStreamImport(sys, subj, ""); err != nil {
			return false, fmt.Errorf("import %s: %w", subj, err)
		}
	}
	opts.Accounts = append(opts.Accounts, sys)
	opts.SystemAccount = SystemAccount
	return true, nil
}
