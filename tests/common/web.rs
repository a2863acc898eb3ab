//! The web page as a browser receives it, over plain HTTP: a session cookie from the
//! sign-in form, pages and form posts (redirects not followed).

use anyhow::{ensure, Context};

use super::serve::Market;

/// A cookie-keeping HTTP client of the web page.
pub struct Browser {
    pub root: String,
    pub http: reqwest::blocking::Client,
    pub cookie: Option<String>,
}

impl Browser {
    pub fn new(m: &Market) -> Self {
        Self {
            root: m.api().base.trim_end_matches("/v1").to_owned(),
            http: reqwest::blocking::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookie: None,
        }
    }

    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut r = self.http.get(format!("{}{path}", self.root));
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        let resp = r.send()?;
        Ok((resp.status().as_u16(), resp.text()?))
    }

    /// POST a form: the status, the Location if any, and the body.
    pub fn post(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<(u16, String, String)> {
        let mut r = self.http.post(format!("{}{path}", self.root)).form(form);
        if let Some(c) = &self.cookie {
            r = r.header("cookie", c);
        }
        let resp = r.send()?;
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok((status, location, resp.text()?))
    }

    pub fn sign_in(&mut self, token: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .post(format!("{}/signin", self.root))
            .form(&[("token", token)])
            .send()?;
        ensure!(resp.status().as_u16() == 303, "sign-in: {}", resp.status());
        let set = resp
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .context("a session cookie")?
            .to_owned();
        ensure!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        self.cookie = Some(set.split(';').next().unwrap_or("").to_owned());
        Ok(set)
    }
}
