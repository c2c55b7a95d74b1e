package web

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rbee/heartbeat/internal/testutil"
	"github.com/rbee/heartbeat/subjects"
	"github.com/rbee/heartbeat/wire"
)

// TestStreamEventFilter: a page asking for ?exclude=updated gets the joins
// and the goodbye, in its snapshot and live, and no status flip; one asking
// for ?event=updated gets only the flips; updates of the entries reach both.
func TestStreamEventFilter(t *testing.T) {
	url, js := system(t)
	w1 := startWorker(t, url, "h1", "w1")
	// w1 joins before the view starts: its entry is in the registry, so the
	// view lists it and records no event for it.
	kv, err := js.KeyValue(t.Context(), subjects.Default().WorkersBucket())
	if err != nil {
		t.Fatal(err)
	}
	testutil.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		_, err := kv.Get(t.Context(), "h1.w1")
		return err
	})
	v := startView(t, js)
	testutil.Eventually(t, 10*time.Second, func() bool { return len(v.watcher.Workers()) == 1 }, "view sees w1")
	srv := httptest.NewServer(v.Events())
	t.Cleanup(srv.Close)

	changes := follow(t, srv.URL+"?exclude=updated")
	flips := follow(t, srv.URL+"?event=updated")
	waitFor(t, changes, has("snapshot", `"events":[]`))
	if err := w1.SetStatus(wire.StatusBusy, wire.Healthy, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, flips, has("event", `"event":"updated"`, `"key":"h1.w1"`, `"previous":"ready"`))
	waitFor(t, changes, has("update", `"status":"busy"`))
	w2 := startWorker(t, url, "h1", "w2")
	waitFor(t, changes, has("event", `"event":"joined"`, `"key":"h1.w2"`))
	if err := w2.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, changes, has("event", `"event":"left"`, `"key":"h1.w2"`))
	for name, s := range map[string]*stream{"exclude=updated": changes, "event=updated": flips} {
		msgs, err := s.all()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if m.name != "event" {
				continue
			}
			flip := strings.Contains(m.data, `"event":"updated"`)
			if flip == (name == "exclude=updated") {
				t.Errorf("%s got %s", name, m.data)
			}
		}
	}
	// A page connecting now gets the filtered recent events in its snapshot.
	late := follow(t, srv.URL+"?event=joined,left")
	waitFor(t, late, func(msgs []message) error {
		if len(msgs) == 0 || msgs[0].name != "snapshot" {
			return errors.New("no snapshot yet")
		}
		if d := msgs[0].data; strings.Contains(d, `"event":"updated"`) || !strings.Contains(d, `"event":"left"`) {
			return fmt.Errorf("snapshot events not filtered: %s", d)
		}
		return nil
	})

	resp, err := http.Get(srv.URL + "?exclude=bogus")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("?exclude=bogus: %d %s, want 400 JSON", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}
