package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rbee/heartbeat/events"
	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// historyEvents runs `rbee events --since 0 --json` with extra flags and
// returns "<event> <key>" per line.
func historyEvents(t *testing.T, natsURL string, extra ...string) []string {
	t.Helper()
	out, err := tryHistoryEvents(t, natsURL, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tryHistoryEvents(t *testing.T, natsURL string, extra ...string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, stdout, stderr := run(t, ctx, "", append([]string{"events", "--nats-url", natsURL, "--since", "0", "--json"}, extra...)...)
	if code != 0 {
		return nil, fmt.Errorf("rbee events %v: exit %d: %s", extra, code, stderr)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if line == "" {
			continue
		}
		var ev wire.Event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("rbee events line %q: %v", line, err)
		}
		out = append(out, ev.Event+" "+ev.Key)
	}
	return out, nil
}

// TestEventsFilter: `rbee events` shows liveness changes by default and
// leaves the status flips out; --event, --exclude and --all select by type;
// a name that is no event type is a usage error, on the command line and on
// /v1/events.
func TestEventsFilter(t *testing.T) {
	natsURL, httpURL := startQueenCommand(t)
	w := beatingWorker(t, natsURL, "h1", "w1", 100*time.Millisecond)
	checkFor(t, 20*time.Second, func() error {
		got, err := tryHistoryEvents(t, natsURL, "--all")
		if err == nil && !slices.Contains(got, "joined h1.w1") {
			err = fmt.Errorf("history %v lacks the join", got)
		}
		return err
	})
	for _, st := range []wire.Status{wire.StatusBusy, wire.StatusReady, wire.StatusBusy} {
		if err := w.SetStatus(st, wire.Healthy, ""); err != nil {
			t.Fatal(err)
		}
		// Each flip is its own KV value: wait for it before the next.
		checkFor(t, 20*time.Second, func() error {
			want := map[wire.Status]int{wire.StatusBusy: 1, wire.StatusReady: 2}[st]
			if n := strings.Count(strings.Join(historyEvents(t, natsURL, "--event", "updated"), "\n"), "updated h1.w1"); n < want {
				return fmt.Errorf("%d updated events, want %d", n, want)
			}
			return nil
		})
	}
	checkFor(t, 20*time.Second, func() error {
		if n := len(historyEvents(t, natsURL, "--event", "updated")); n != 3 {
			return fmt.Errorf("%d updated events, want 3", n)
		}
		return nil
	})
	if got := historyEvents(t, natsURL); !slices.Equal(got, []string{"joined h1.w1"}) {
		t.Errorf("rbee events (default): %v, want the join only", got)
	}
	if got := historyEvents(t, natsURL, "--all"); len(got) != 4 {
		t.Errorf("rbee events --all: %v, want the join and 3 updates", got)
	}
	if got := historyEvents(t, natsURL, "--exclude", "joined"); len(got) != 3 || slices.Contains(got, "joined h1.w1") {
		t.Errorf("rbee events --exclude joined: %v", got)
	}
	if got := historyEvents(t, natsURL, "--event", "joined,expired", "--hive", "h1"); !slices.Equal(got, []string{"joined h1.w1"}) {
		t.Errorf("rbee events --event joined,expired --hive h1: %v", got)
	}
	code, _, stderr := run(t, t.Context(), "", "events", "--nats-url", natsURL, "--event", "exploded")
	if code != 2 || !strings.Contains(stderr, `unknown event type "exploded"`) {
		t.Errorf("--event exploded: exit %d, %q", code, stderr)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(httpURL + "/v1/events?event=exploded")
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body["error"], "exploded") {
		t.Errorf("/v1/events?event=exploded: %d %v, want 400 with the error", resp.StatusCode, body)
	}
}

// TestDeathWhileQueenDownEntersHistory: a worker that dies while the only
// queen (and its embedded broker) is down has an expired event in the
// history once the queen is back.
func TestDeathWhileQueenDownEntersHistory(t *testing.T) {
	dir := t.TempDir()
	ports := testutil.FreePorts(t, 2)
	natsURL, _, stop := startQueenOn(t, dir, ports[0], ports[1])
	w := beatingWorker(t, natsURL, "h1", "doomed", 200*time.Millisecond) // TTL 1 s
	checkFor(t, 20*time.Second, func() error {
		got, err := tryHistoryEvents(t, natsURL)
		if err == nil && !slices.Contains(got, "joined h1.doomed") {
			err = fmt.Errorf("history %v lacks the join", got)
		}
		return err
	})
	stop()
	w.Abandon() // dies without a goodbye while no queen runs
	// The broker alone, as after a reboot before the queen is back: the
	// entry expires with no queen watching.
	srv := embeddedOn(t, dir, ports[0])
	js, err := jetstream.New(testutil.Connect(t, srv.ClientURL()))
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 30*time.Second, func() error {
		kv, err := js.KeyValue(t.Context(), "rbee_workers")
		if err != nil {
			return err
		}
		if _, err := kv.Get(t.Context(), "h1.doomed"); err == nil {
			return fmt.Errorf("h1.doomed still in the registry")
		} else if !errors.Is(err, jetstream.ErrKeyNotFound) {
			return err
		}
		return nil
	})
	srv.Shutdown()
	natsURL, _, _ = startQueenOn(t, dir, ports[0], ports[1])
	var expired *wire.Event
	js, err = jetstream.New(testutil.Connect(t, natsURL))
	if err != nil {
		t.Fatal(err)
	}
	// Each poll makes a consumer: poll gently.
	testutil.CheckFor(t, 30*time.Second, 250*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var got []string
		err = events.Read(ctx, js, subjects.Default(), events.Query{}, func(r events.Record) error {
			got = append(got, r.Event.Event+" "+r.Event.Key)
			if r.Event.Event == "expired" && r.Event.Key == "h1.doomed" {
				e := r.Event
				expired = &e
			}
			return nil
		})
		if err != nil {
			return err
		}
		if expired == nil {
			return fmt.Errorf("history %v has no expired event for h1.doomed", got)
		}
		return nil
	})
	if expired.Previous != events.Unseen || expired.ModelID != "m-doomed" {
		t.Errorf("expired event %+v: want previous %q and the worker's model", *expired, events.Unseen)
	}
}
