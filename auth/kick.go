package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// SystemKick returns a KickFunc that ends connections on every server of
// nc's cluster through the system account's requests: it asks each server
// for its connections ($SYS.REQ.SERVER.PING.CONNZ) and kicks the matching
// ones ($SYS.REQ.SERVER.<id>.KICK). nc must be a system account user's.
// wait is how long it collects the servers' answers.
func SystemKick(nc *nats.Conn, wait time.Duration) KickFunc {
	return func(ctx context.Context, match func(user string) bool) (int, error) {
		type connz struct {
			Server struct {
				ID string `json:"id"`
			} `json:"server"`
			Data struct {
				Conns []struct {
					Cid  uint64 `json:"cid"`
					User string `json:"authorized_user"`
				} `json:"connections"`
			} `json:"data"`
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		inbox := nc.NewRespInbox()
		sub, err := nc.SubscribeSync(inbox)
		if err != nil {
			return 0, err
		}
		defer func() { _ = sub.Unsubscribe() }()
		req, _ := json.Marshal(map[string]any{"auth": true, "limit": 1 << 20})
		if err := nc.PublishRequest("$SYS.REQ.SERVER.PING.CONNZ", inbox, req); err != nil {
			return 0, err
		}
		deadline := time.Now().Add(wait)
		n, answered := 0, 0
		var errs []error
		for {
			left := time.Until(deadline)
			if left <= 0 {
				break
			}
			m, err := sub.NextMsg(left)
			if errors.Is(err, nats.ErrTimeout) {
				break
			}
			if err != nil {
				return n, err
			}
			var cz connz
			if err := json.Unmarshal(m.Data, &cz); err != nil || cz.Error != nil {
				errs = append(errs, fmt.Errorf("connz answer: %s", m.Data))
				continue
			}
			answered++
			for _, c := range cz.Data.Conns {
				if !match(c.User) {
					continue
				}
				body, _ := json.Marshal(map[string]uint64{"cid": c.Cid})
				rctx, cancel := context.WithTimeout(ctx, wait)
				_, err := nc.RequestWithContext(rctx, "$SYS.REQ.SERVER."+cz.Server.ID+".KICK", body)
				cancel()
				if err != nil {
					errs = append(errs, fmt.Errorf("kick %s/%d: %w", cz.Server.ID, c.Cid, err))
					continue
				}
				n++
			}
		}
		if answered == 0 {
			errs = append(errs, errors.New("no server answered the connection listing (is this a system account user?)"))
		}
		return n, errors.Join(errs...)
	}
}
